// A line diff (longest common subsequence) of two configs.

export type DiffLine = { op: "same" | "del" | "add"; text: string; a?: number; b?: number };

export function diffLines(left: string, right: string): DiffLine[] {
  const a = left.split("\n");
  const b = right.split("\n");
  // Configs are small (hundreds of lines); O(n·m) is fine and bounded here.
  if (a.length * b.length > 4_000_000) {
    return [...a.map((text, i) => ({ op: "del" as const, text, a: i + 1 })), ...b.map((text, i) => ({ op: "add" as const, text, b: i + 1 }))];
  }
  const lcs: Uint32Array[] = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out: DiffLine[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      out.push({ op: "same", text: a[i], a: i + 1, b: j + 1 });
      i++;
      j++;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) {
      out.push({ op: "del", text: a[i], a: ++i });
    } else {
      out.push({ op: "add", text: b[j], b: ++j });
    }
  }
  while (i < a.length) out.push({ op: "del", text: a[i], a: ++i });
  while (j < b.length) out.push({ op: "add", text: b[j], b: ++j });
  return out;
}
