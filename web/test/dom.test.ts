// @vitest-environment happy-dom
import { readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { h } from "../src/dom";
import { setLang } from "../src/i18n";
import { renderCard } from "../src/ui/cards";

const PAYLOADS = [
  `<script>alert(1)</script>`,
  `<img src=x onerror=alert(1)>`,
  `"><svg onload=alert(1)>`,
  `</p><iframe src="javascript:alert(1)">`,
];

describe("text-only rendering", () => {
  it("strings become text nodes, never markup", () => {
    for (const p of PAYLOADS) {
      const el = h("p", {}, p);
      expect(el.children.length).toBe(0);
      expect(el.textContent).toBe(p);
    }
  });
  it("event handler attributes are refused", () => {
    expect(() => h("button", { onclick: "alert(1)" })).toThrow();
    expect(() => h("img", { OnError: "alert(1)" })).toThrow();
  });
  it("cards put every value in as text; flags are marked", () => {
    const card = renderCard({
      kind: "labs",
      title: PAYLOADS[0],
      rows: [
        { name: PAYLOADS[1], value: "8.1", unit: "%", range: "4.6-6.2", flag: "H" },
        { name: "eGFR", value: "42", flag: "L" },
        { name: "Na", value: "140" },
      ],
    });
    expect(card.querySelectorAll("script, img, svg, iframe").length).toBe(0);
    expect(card.querySelector("h3")!.textContent).toBe(PAYLOADS[0]);
    const flags = [...card.querySelectorAll("tbody td.flag")].map((td) => td.textContent);
    expect(flags).toEqual(["H", "L", ""]);
    expect(card.querySelector("tbody tr")!.className).toBe("flag-h");
    const summary = renderCard({ kind: "summary", sections: [{ heading: "Allergies", items: [PAYLOADS[2]] }] });
    expect(summary.querySelector("li")!.textContent).toBe(PAYLOADS[2]);
    expect(summary.querySelectorAll("svg").length).toBe(0);
  });
  it("translates the summary headings the bots' cards name", () => {
    setLang("ja");
    const card = renderCard({ kind: "summary", sections: [{ heading: "Allergies", key: "allergies", items: ["x"] }] });
    expect(card.querySelector("h4")!.textContent).toBe("アレルギー");
    setLang("en");
    const en = renderCard({ kind: "summary", sections: [{ heading: "Allergies", key: "allergies", items: ["x"] }] });
    expect(en.querySelector("h4")!.textContent).toBe("Allergies");
  });
});

describe("source rules", () => {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const f of readdirSync(d)) {
      const p = path.join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (p.endsWith(".ts")) files.push(p);
    }
  };
  walk(path.join(__dirname, "..", "src"));
  it("no HTML sinks or eval anywhere in src/", () => {
    expect(files.length).toBeGreaterThan(5);
    for (const f of files) {
      const src = readFileSync(f, "utf8");
      for (const sink of ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc"]) {
        expect(src.includes(sink), `${sink} in ${f}`).toBe(false);
      }
    }
  });
  it("the token never goes into a URL or storage other than IndexedDB", () => {
    for (const f of files) {
      const src = readFileSync(f, "utf8");
      expect(/token=|\?token|localStorage\.setItem\([^)]*token|sessionStorage|document\.cookie/i.test(src), f).toBe(false);
    }
  });
});
