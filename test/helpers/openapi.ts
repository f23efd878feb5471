import { readFileSync } from 'node:fs';
import SwaggerParser from '@apidevtools/swagger-parser';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { parse } from 'yaml';

export type Json = Record<string, any>;

export const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
/** A JSON pointer's segment: `/referrals/v1/tokens` as `~1referrals~1v1~1tokens`. */
export const escape = (segment: string) => segment.replaceAll('~', '~0').replaceAll('/', '~1');

export interface OpenApi {
  spec: Json;
  /** The node a local `$ref` (`#/a/b`) points at; throws when there is none. */
  target(ref: string): Json;
  /** A response, parameter or header object with its `$ref` followed; `pointer`: where it lives, for validatorAt. */
  followed(node: Json, pointer: string): { node: Json; pointer: string };
  /** Ajv's validator of the schema at `pointer` (`/components/schemas/Error`), its refs resolved in the document. */
  validatorAt(pointer: string): ValidateFunction;
}

/** A document of docs/ (`openapi.yaml`), with Ajv set up as the specs are checked: strict, draft 2020-12. */
export function openApi(file: string): OpenApi {
  const spec = parse(readFileSync(new URL(`../../docs/${file}`, import.meta.url), 'utf8')) as Json;
  const target = (ref: string): Json => {
    if (!ref.startsWith('#/')) throw new Error(`${ref}: only local refs are used`);
    let node: any = spec;
    for (const part of ref.slice(2).split('/').map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'))) {
      node = node?.[part];
      if (node === undefined) throw new Error(`${ref} does not resolve`);
    }
    return node;
  };
  const ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true });
  ajv.addFormat('int64', { type: 'number', validate: Number.isSafeInteger });
  // the document is added whole, so a response schema's refs resolve in it; Ajv compiles its root on the way,
  // whose fields (openapi, paths, components...) are then keywords that check nothing
  ajv.addVocabulary(Object.keys(spec));
  ajv.addSchema(spec, 'openapi');
  const validators = new Map<string, ValidateFunction>();
  return {
    spec,
    target,
    followed: (node, pointer) => (node.$ref ? { node: target(node.$ref), pointer: (node.$ref as string).slice(1) } : { node, pointer }),
    validatorAt(pointer) {
      let v = validators.get(pointer);
      if (!v) validators.set(pointer, (v = ajv.compile({ $ref: `openapi#${pointer}` })));
      return v;
    },
  };
}

/** Every `$ref` of the document. */
export function refsOf(spec: Json): string[] {
  const refs: string[] = [];
  const walk = (node: unknown) => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (node && typeof node === 'object') for (const [k, v] of Object.entries(node)) (k === '$ref' ? refs.push(v as string) : walk(v));
  };
  walk(spec);
  return refs;
}

// JSON Schema lets an enum or const go without a type, but generators do not all infer one: Swift's makes an
// untyped container of it, swagger-codegen's Java an enum that does not compile, and a Go client wants a string
/** Where the document has an enum or const without a type. */
export function untypedEnums(spec: Json): string[] {
  const untyped: string[] = [];
  const walk = (node: unknown, at: string) => {
    if (Array.isArray(node)) node.forEach((n, i) => walk(n, `${at}/${i}`));
    else if (node && typeof node === 'object') {
      if (('enum' in node || 'const' in node) && !('type' in node)) untyped.push(at);
      for (const [k, v] of Object.entries(node)) walk(v, `${at}/${k}`);
    }
  };
  walk(spec, '#');
  return untyped;
}

/**
 * The OpenAPI project's own 3.1 schema: a misplaced or misspelt field (`reponses`) is no part of the
 * document to a generator, which then makes code without it. Resolves with the document, else throws why.
 */
export function validatedBySchema(spec: Json): Promise<unknown> {
  return SwaggerParser.validate(structuredClone(spec) as never);
}
