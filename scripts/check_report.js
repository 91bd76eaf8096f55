// Loads a report page in headless Chromium at 1280 px, takes a full-page screenshot and prints
// one JSON object: console errors and warnings, page errors, requests that left the file,
// the page's scroll width, and per chart its title and the number of marks drawn in the
// report's palette with a visible size.
//
//   NODE_PATH=.browser/node_modules node scripts/check_report.js REPORT.html SHOT.png
const path = require("path");
const { chromium } = require("playwright-core");

(async () => {
  const [page_file, shot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  const requests = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") errors.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("request", (r) => { if (!r.url().startsWith("file:")) requests.push(r.url()); });
  await page.goto("file://" + path.resolve(page_file), { waitUntil: "load" });
  const result = await page.evaluate(() => {
    const palette = document.body.dataset.palette.toLowerCase().split(" ");
    const charts = [...document.querySelectorAll("figure.chart")].map((f) => {
      const marks = [...f.querySelectorAll("svg rect, svg circle, svg polyline, svg path")]
        .filter((el) => {
          const fill = (el.getAttribute("fill") || "").toLowerCase();
          const stroke = (el.getAttribute("stroke") || "").toLowerCase();
          if (!palette.includes(fill) && !palette.includes(stroke)) return false;
          const r = el.getBoundingClientRect();
          const line = el.tagName === "polyline" || el.tagName === "path";
          return line ? r.width > 0.5 || r.height > 0.5 : r.width > 0.5 && r.height > 0.5;
        }).length;
      const box = f.getBoundingClientRect();
      return { title: f.querySelector("figcaption strong").textContent, marks, right: box.right };
    });
    return { charts, scrollWidth: document.documentElement.scrollWidth };
  });
  await page.screenshot({ path: shot, fullPage: true });
  await browser.close();
  console.log(JSON.stringify({ ...result, errors, requests }));
})().catch((e) => { console.error(e); process.exit(1); });
