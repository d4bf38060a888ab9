import { describe, expect, it } from "vitest";
import { DICTIONARIES, pickLang, roleName, t } from "../src/i18n";

describe("i18n", () => {
  it("the browser language picks, the switch overrides", () => {
    expect(pickLang(["ja-JP", "en"], null)).toBe("ja");
    expect(pickLang(["en-US"], null)).toBe("en");
    expect(pickLang(["fr-FR", "ja"], null)).toBe("ja");
    expect(pickLang(["de"], null)).toBe("en");
    expect(pickLang(["ja-JP"], "en")).toBe("en");
    expect(pickLang(["en-US"], "ja")).toBe("ja");
    expect(pickLang(["en-US"], "xx")).toBe("en");
  });
  it("both languages have every text with the same placeholders", () => {
    const holes = (s: string) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();
    for (const [k, v] of Object.entries(DICTIONARIES.en)) {
      const ja = DICTIONARIES.ja[k as keyof typeof DICTIONARIES.en];
      expect(ja, k).toBeTruthy();
      expect(holes(ja), k).toEqual(holes(v));
    }
  });
  it("fills parameters and names roles", () => {
    expect(t("unread_n", { n: 3 }, "en")).toBe("3 unread");
    expect(t("unread_n", { n: 3 }, "ja")).toBe("未読 3 件");
    expect(roleName("care_manager", "ja")).toBe("ケアマネジャー");
    expect(roleName(undefined, "en")).toBe("role not stated");
  });
});
