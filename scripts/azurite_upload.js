// Creates a container in Azurite (the Azure Blob Storage emulator) and uploads the Parquet
// files of a local directory into it, or downloads what is under a prefix, for
// tests/it/cloud.rs.
//
//   node scripts/azurite_upload.js BLOB_URL CONTAINER [LOCAL_DIR PREFIX]
//   node scripts/azurite_upload.js BLOB_URL CONTAINER --download PREFIX LOCAL_DIR
//
// BLOB_URL is Azurite's account URL (http://127.0.0.1:PORT/devstoreaccount1). Azurite's
// well-known development account and key are used. Needs @azure/storage-blob (installed by
// scripts/setup-emulators.sh; NODE_PATH points at it).
const fs = require("fs");
const path = require("path");
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");

const KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const [url, container, ...rest] = process.argv.slice(2);

function* files(root) {
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    const full = path.join(root, entry.name);
    if (entry.isDirectory()) yield* files(full);
    else if (entry.name.endsWith(".parquet")) yield full;
  }
}

(async () => {
  const service = new BlobServiceClient(url, new StorageSharedKeyCredential("devstoreaccount1", KEY));
  const client = service.getContainerClient(container);
  await client.createIfNotExists();
  let n = 0;
  if (rest[0] === "--download") {
    const [, prefix, dir] = rest;
    for await (const blob of client.listBlobsFlat({ prefix })) {
      const target = path.join(dir, blob.name.slice(prefix.length));
      fs.mkdirSync(path.dirname(target), { recursive: true });
      await client.getBlobClient(blob.name).downloadToFile(target);
      n += 1;
    }
    console.log(`downloaded ${n}`);
    return;
  }
  const [dir, prefix] = rest;
  if (dir) {
    for (const file of files(dir)) {
      const name = prefix + path.relative(dir, file).split(path.sep).join("/");
      await client.getBlockBlobClient(name).uploadFile(file);
      n += 1;
    }
  }
  console.log(`uploaded ${n}`);
})().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
