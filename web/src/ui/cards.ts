// Bot cards rendered as cards. Every value goes in as text (dom.h).
import { h } from "../dom.js";
import { t } from "../i18n.js";
import { labFlag, type Card } from "../mls/tonari.js";

export function renderCard(card: Card): HTMLElement {
  if (card.kind === "labs") {
    const rows = card.rows.map((r) => {
      const flag = labFlag(r.flag);
      const flagText = flag ? t(`flag_${flag}` as "flag_H") : "";
      return h(
        "tr",
        { class: flag ? `flag-${flag === "!" ? "crit" : flag.toLowerCase()}` : undefined },
        h("th", { scope: "row" }, r.name, r.code ? h("span", { class: "code" }, ` ${r.code}`) : null),
        h("td", { class: "num" }, r.value, r.unit ? ` ${r.unit}` : ""),
        h("td", {}, r.range ?? ""),
        h("td", { class: "flag" }, flag ? h("abbr", { title: flagText, "aria-label": flagText }, flag) : ""),
      );
    });
    return h(
      "section",
      { class: "card card-labs", "aria-label": card.title ?? t("lab_results") },
      h("h3", {}, card.title ?? t("lab_results")),
      card.source ? h("p", { class: "meta" }, card.source) : null,
      h(
        "div",
        { class: "table-scroll" },
        h(
          "table",
          {},
          h(
            "thead",
            {},
            h("tr", {}, h("th", { scope: "col" }, t("lab_test")), h("th", { scope: "col" }, t("lab_value")), h("th", { scope: "col" }, t("lab_range")), h("th", { scope: "col" }, t("lab_flag"))),
          ),
          h("tbody", {}, rows),
        ),
      ),
    );
  }
  return h(
    "section",
    { class: "card card-summary", "aria-label": card.title ?? t("summary") },
    h("h3", {}, card.title ?? t("summary")),
    card.sections.map((s) => [
      h("h4", {}, s.key ? t(`summary_${s.key}`) : s.heading),
      h("ul", {}, s.items.map((i) => h("li", {}, i))),
    ]),
  );
}
