// Bundles the web chat into dist/: index.html, app.js, app.css (+ source maps).
//
//   node build.mjs            production build (minified, source maps)
//   node build.mjs --dev      development build (React's warnings, not minified)
//   node build.mjs --watch    development build, rebuilt on change
//
// `@chorus/client` and `@chorus/client/react` are bundled from the SDK's
// source (../js/src), so the app needs no prior SDK build, and `react` /
// `react-dom` always resolve to this package's node_modules: the SDK's React
// bindings and the app share ONE copy of React (two copies break hooks).
import * as esbuild from "esbuild";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
const sdk = join(here, "..", "js", "src");
const watch = process.argv.includes("--watch");
const dev = watch || process.argv.includes("--dev");

/** @type {esbuild.Plugin} */
const oneReactOneSdk = {
  name: "chorus-resolve",
  setup(build) {
    build.onResolve({ filter: /^@chorus\/client(\/react)?$/ }, (args) => ({
      path: args.path.endsWith("/react") ? join(sdk, "react", "index.ts") : join(sdk, "index.ts"),
    }));
    build.onResolve({ filter: /^(react|react-dom|scheduler)(\/.*)?$/ }, async (args) => {
      if (args.pluginData?.chorusPinned) return undefined;
      const result = await build.resolve(args.path, {
        kind: args.kind,
        resolveDir: here,
        pluginData: { chorusPinned: true },
      });
      if (result.errors.length > 0) return { errors: result.errors };
      return { path: result.path, sideEffects: result.sideEffects };
    });
  },
};

const html = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>Chorus</title>
    <link rel="icon" href="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Ccircle cx='8' cy='8' r='7' fill='%232563eb'/%3E%3C/svg%3E" />
    <link rel="stylesheet" href="./app.css" />
  </head>
  <body>
    <div id="root"></div>
    <noscript>Chorus needs JavaScript.</noscript>
    <script type="module" src="./app.js"></script>
  </body>
</html>
`;

/** @type {esbuild.BuildOptions} */
const options = {
  absWorkingDir: here,
  entryPoints: { app: join(here, "src", "main.tsx") },
  outdir: out,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome110", "firefox110", "safari16"],
  jsx: "automatic",
  minify: !dev,
  sourcemap: true,
  legalComments: "linked",
  define: { "process.env.NODE_ENV": JSON.stringify(dev ? "development" : "production") },
  plugins: [oneReactOneSdk],
  metafile: true,
  logLevel: "info",
};

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await writeFile(join(out, "index.html"), html);

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log("watching for changes…");
} else {
  const result = await esbuild.build(options);
  // Fail loudly if React got bundled twice (e.g. a second copy under ../js/node_modules).
  const reactCopies = new Set(
    Object.keys(result.metafile.inputs)
      .map((p) => p.match(/^(.*node_modules\/react)\/(?:index|cjs\/react\.production)/)?.[1])
      .filter(Boolean),
  );
  if (reactCopies.size > 1) {
    console.error(`more than one copy of React in the bundle: ${[...reactCopies].join(", ")}`);
    process.exit(1);
  }
  const text = await esbuild.analyzeMetafile(result.metafile);
  console.log(text.split("\n").slice(0, 12).join("\n"));
}
