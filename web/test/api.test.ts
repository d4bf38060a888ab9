import { describe, expect, it } from "vitest";
import { b64, unb64 } from "../src/api";

describe("base64", () => {
  it("round-trips large byte arrays like Rust's standard engine", () => {
    const big = new Uint8Array(200_000).map((_, i) => (i * 31) & 0xff);
    expect(unb64(b64(big))).toEqual(big);
    expect(b64(new Uint8Array([0, 1, 2, 255]))).toBe("AAEC/w==");
  });
});
