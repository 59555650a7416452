// Renders the service's OpenAPI document (/openapi.json): operations, parameters, bodies,
// responses and schemas. Plain DOM code, no framework and no network beyond this service.
"use strict";

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};

// A schema as one line of text: "$ref" names link to the schema section below.
function typeOf(schema) {
  if (!schema) return el("span", {}, "any");
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return el("a", { href: `#schema-${name}` }, name);
  }
  const span = el("span");
  const alts = schema.anyOf || schema.oneOf;
  if (alts) {
    alts.forEach((s, i) => { if (i) span.append(" | "); span.append(typeOf(s)); });
    return span;
  }
  if (schema.enum) return el("code", {}, schema.enum.map((v) => JSON.stringify(v)).join(" | "));
  if (schema.type === "array") { span.append("list of ", typeOf(schema.items)); return span; }
  if (schema.type === "object" && schema.additionalProperties && !schema.properties) {
    span.append("map of ", typeOf(schema.additionalProperties)); return span;
  }
  const rules = ["minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "minItems", "maxItems", "pattern"]
    .filter((k) => k in schema).map((k) => `${k} ${schema[k]}`);
  span.append(Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any");
  if (rules.length) span.append(el("span", { class: "muted" }, ` (${rules.join(", ")})`));
  return span;
}

function propertiesTable(schema) {
  const required = new Set(schema.required || []);
  const table = el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "")));
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    table.append(el("tr", {}, el("td", {}, el("code", {}, name + (required.has(name) ? "" : "?"))),
      el("td", {}, typeOf(prop)), el("td", { class: "muted" }, prop.description || "")));
  }
  return table;
}

function operation(path, method, op) {
  const box = el("div", { class: "op", id: op.operationId });
  const scope = (op.security || []).map((s) => Object.values(s).flat().join(", ")).join(" or ");
  box.append(el("span", { class: "scope" }, scope ? `key scope: ${scope}` : "open"));
  box.append(el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), path));
  box.append(el("p", {}, op.summary || ""));
  if ((op.parameters || []).length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "")));
    for (const p of op.parameters) {
      table.append(el("tr", {}, el("td", {}, el("code", {}, p.name + (p.required ? "" : "?"))),
        el("td", {}, p.in), el("td", {}, typeOf(p.schema)), el("td", { class: "muted" }, p.description || "")));
    }
    box.append(table);
  }
  const body = op.requestBody && op.requestBody.content["application/json"];
  if (body) box.append(el("p", {}, "Body: ", typeOf(body.schema)));
  const responses = el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "body"), el("th", {}, "")));
  for (const [status, response] of Object.entries(op.responses || {})) {
    const content = response.content || {};
    const json = content["application/json"];
    responses.append(el("tr", {}, el("td", {}, status),
      el("td", {}, json ? typeOf(json.schema) : Object.keys(content).join(", ") || "-"),
      el("td", { class: "muted" }, response.description || (response.$ref ? "error" : ""))));
  }
  box.append(responses);
  return box;
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  document.title = spec.info.title;
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  document.getElementById("about").textContent = spec.info.description || "";
  const ops = document.getElementById("operations");
  const toc = document.getElementById("toc");
  ops.replaceChildren();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      ops.append(operation(path, method, op));
      toc.append(el("a", { href: `#${op.operationId}` }, `${method.toUpperCase()} ${path}`));
    }
  }
  const schemas = document.getElementById("schemas");
  schemas.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(spec.components.schemas || {})) {
    const box = el("div", { class: "op", id: `schema-${name}` }, el("h3", {}, name));
    if (schema.description) box.append(el("p", { class: "muted" }, schema.description));
    box.append(schema.properties ? propertiesTable(schema) : el("p", {}, typeOf(schema)));
    schemas.append(box);
  }
}

main().catch((err) => {
  document.getElementById("operations").textContent = `Cannot load /openapi.json: ${err}`;
});
