//! Row-parallel loops for the models: per-row work split into one contiguous chunk per core.

/// `f(0), f(1), …, f(n−1)`, computed in contiguous chunks on as many threads as there are
/// cores and returned in row order: the same values whatever the number of cores, as long as
/// each row's value depends on that row alone. A panic in `f` resumes in the caller.
pub fn map_rows<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    map_row_chunks(n, |rows| rows.map(&f).collect())
}

/// Like [`map_rows`], with `f` called once per chunk of rows (so it can reuse a buffer).
pub fn map_row_chunks<T: Send>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = n.div_ceil(threads).max(1);
    if n <= chunk {
        return f(0..n);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let f = &f;
                scope.spawn(move || f(start..(start + chunk).min(n)))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_in_order() {
        for n in [0, 1, 2, 3, 1000, 1001] {
            assert_eq!(
                map_rows(n, |i| i * 2),
                (0..n).map(|i| i * 2).collect::<Vec<_>>()
            );
        }
    }
}
