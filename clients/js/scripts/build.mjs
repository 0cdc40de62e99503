// Bundles the package with esbuild: one ESM entry per subpath export
// (`.` and `./react`), shared code split into a common chunk so both entry
// points see the same ChorusClient class. Declarations come from tsc.
import { build } from "esbuild";
import { existsSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });

const entryPoints = { index: "src/index.ts" };
// The React bindings are optional at build time (developed separately).
if (existsSync("src/react/index.ts")) entryPoints.react = "src/react/index.ts";
else if (existsSync("src/react/index.tsx")) entryPoints.react = "src/react/index.tsx";

await build({
  entryPoints,
  outdir: "dist",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  sourcemap: true,
  jsx: "automatic",
  external: ["@msgpack/msgpack", "ws", "react", "react-dom", "react/jsx-runtime"],
  logLevel: "info",
});
