/**
 * `make` run on the first call and its result kept: for what a module makes once, when first asked for
 * rather than at import (its metrics; where lua/ is). The CLI imports every command's modules, so registered at import, the
 * standalone snapshot writer exported the series of serve's services (at 0) besides its own.
 */
export function onFirstUse<T>(make: () => T): () => T {
  let made: T | undefined;
  return () => (made ??= make());
}
