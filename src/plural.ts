/** `n` and the noun for that many: "1 token", "3 tokens". The CLI's lines read "revoked 1 tokens", "1 users not given". */
export const counted = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;
