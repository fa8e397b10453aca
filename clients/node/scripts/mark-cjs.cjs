// dist/cjs holds CommonJS, but the package is "type": "module": mark the folder.
require('node:fs').writeFileSync(require('node:path').join(__dirname, '..', 'dist', 'cjs', 'package.json'), '{"type": "commonjs"}\n');
