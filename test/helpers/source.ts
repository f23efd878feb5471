/** Every module a source file names: in an import, an `export ... from`, or an `import()` of a literal. */
export function importSpecifiers(text: string): string[] {
  return [...text.matchAll(/\bfrom\s*['"]([^'"]+)['"]|\bimport\s*\(?\s*['"]([^'"]+)['"]/g)].map((m) => (m[1] ?? m[2])!);
}
