// The official TypeScript SDK against a running PanaversityFS: one JSON line per check.
// Usage: node ts_client_check.mjs <mcp url> <bearer token>
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token] = process.argv.slice(2);
const BOOK = "ts-check-book";
const LESSON = "content/01-Check/01-Client/01-largest.md";
const results = [];
const check = (name, ok, detail = "") => results.push({ name, ok: Boolean(ok), detail: String(detail).slice(0, 300) });

async function connect(headers) {
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  const client = new Client({ name: "ts-sdk-check", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

try {
  const client = await connect({ Authorization: `Bearer ${token}` });
  const tools = (await client.listTools()).tools; // output schemas now validate every result
  check("tools/list", tools.length >= 17, `${tools.length} tools`);
  const largest = "# Largest\n" + "y".repeat(2 * 1024 * 1024 - 10);
  await client.callTool({ name: "write_content", arguments: { book_id: BOOK, path: LESSON, content: largest } });
  const read = await client.callTool({ name: "read_content", arguments: { book_id: BOOK, path: LESSON } });
  check("2 MiB lesson read", read.content[0].text === largest && read.structuredContent.file_hash, `${read.content[0].text.length} chars`);
  for (let n = 2; n <= 9; n++) {
    const path = `content/01-Check/02-Page/0${n}-lesson.md`;
    await client.callTool({ name: "write_content", arguments: { book_id: BOOK, path, content: "z".repeat(150000) } });
  }
  const page = await client.callTool({ name: "read_content", arguments: { book_id: BOOK, scope: "chapter", path: "content/01-Check/02-Page" } });
  const embedded = page.content.filter((b) => b.type === "resource").length;
  check("book page", embedded > 1 && page.structuredContent.files.length === embedded, `${embedded} files on the first page`);
  const png = Buffer.concat([Buffer.from("89504e470d0a1a0a", "hex"), Buffer.alloc(1_200_000, 7)]);
  await client.callTool({ name: "upload_asset", arguments: { book_id: BOOK, asset_type: "images", filename: "big.png", binary_data: png.toString("base64") } });
  const asset = await client.callTool({ name: "get_asset", arguments: { book_id: BOOK, path: "static/images/big.png", include_binary: true } });
  const image = asset.content.find((b) => b.type === "image");
  const link = asset.content.find((b) => b.type === "resource_link");
  check("inline 1.2 MB image", image && Buffer.from(image.data, "base64").equals(png) && link, image ? image.mimeType : "no image block");
  const missing = await client.callTool({ name: "read_content", arguments: { book_id: BOOK, path: "content/01-Check/01-Client/09-none.md" } });
  check("error result", missing.isError && JSON.parse(missing.content[0].text).error === "NOT_FOUND", missing.content[0].text);
  const templates = (await client.listResourceTemplates()).resourceTemplates;
  check("resource template", templates.some((t) => t.uriTemplate.startsWith("book://")), templates.map((t) => t.uriTemplate).join(","));
  const resource = await client.readResource({ uri: `book://${BOOK}/${LESSON}` });
  check("resources/read", resource.contents[0].mimeType === "text/markdown" && resource.contents[0].text === largest);
  const completed = await client.complete({ ref: { type: "ref/resource", uri: templates[0].uriTemplate }, argument: { name: "book_id", value: "ts-" } });
  check("completion", completed.completion.values.includes(BOOK), completed.completion.values.join(","));
  await client.close();
} catch (error) {
  check("session", false, `${error?.constructor?.name}: ${error?.message}`);
}

try {
  const anonymous = await connect({});
  check("401 without a token", false, "connected without a token");
  await anonymous.close();
} catch (error) {
  const text = String(error?.message);
  check("401 without a token", text.includes("bearer token") && text.includes("resource_metadata"), text);
}

for (const line of results) console.log(JSON.stringify(line));
process.exit(results.every((r) => r.ok) ? 0 : 1);
