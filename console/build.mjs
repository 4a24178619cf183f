// Builds the console into DIR (argument): DIR/index.html and DIR/assets/*, with
// content-hashed asset names (served as immutable) and an index.html that names them.
import * as esbuild from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from "node:fs";
import { basename, join, relative } from "node:path";

const out = process.argv[2];
if (!out) {
  console.error("usage: node build.mjs OUT_DIR");
  process.exit(2);
}
rmSync(out, { recursive: true, force: true });
const result = await esbuild.build({
  entryPoints: ["src/main.ts", "src/style.css"],
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outdir: join(out, "assets"),
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});
const outputs = Object.keys(result.metafile.outputs).map((p) => "/ui/" + relative(out, p));
const js = outputs.find((p) => p.endsWith(".js"));
const css = outputs.find((p) => p.endsWith(".css"));
if (!js || !css) throw new Error(`esbuild made no js or css: ${outputs.join(", ")}`);
const html = readFileSync("src/index.html", "utf8").replace("{{js}}", js).replace("{{css}}", css);
writeFileSync(join(out, "index.html"), html);
mkdirSync(join(out, "assets"), { recursive: true });
copyFileSync("src/favicon.svg", join(out, "favicon.svg"));
console.error(`console built: ${[js, css].map((p) => basename(p)).join(", ")}`);
