import "./styles.css";
import { Client } from "./client.js";
import { initLang } from "./i18n.js";
import { Store } from "./store.js";
import { App } from "./ui/app.js";

async function main(): Promise<void> {
  initLang();
  const root = document.getElementById("app")!;
  const store = await Store.open();
  const client = await Client.open(store);
  new App(root, client).start();
}

void main();
