// Drives `hopline chaos` with the real third-party Toxiproxy client from npm
// (toxiproxy-node-client 4.1.0). Usage: node toxiproxy_node.js API_PORT UPSTREAM_HOST:PORT
// Exit 0 when every check holds.
const net = require("net");
const { Toxiproxy, ToxiproxyError } = require("toxiproxy-node-client");

function timedRequest(addr) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect(port, host, () => s.write("GET /node HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"));
    let data = "";
    s.on("data", (d) => (data += d));
    s.on("end", () => {
      if (!data.startsWith("HTTP/1.1 200")) return reject(new Error("bad answer: " + data.slice(0, 80)));
      resolve(Number(process.hrtime.bigint() - t0) / 1e6);
    });
    s.on("error", reject);
  });
}

function refused(addr) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    s.on("connect", () => { s.destroy(); resolve(false); });
    s.on("error", () => resolve(true));
  });
}

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

async function main() {
  const [apiPort, upstream] = [process.argv[2], process.argv[3]];
  const tp = new Toxiproxy(`http://127.0.0.1:${apiPort}`);
  const version = await tp.getVersion();
  check(JSON.parse(version).version === "2.12.0", "version " + version);
  const proxy = await tp.createProxy({ name: "node_svc", listen: "127.0.0.1:0", upstream });
  check(proxy.enabled === true && proxy.upstream === upstream, "created " + JSON.stringify(proxy.toJson()));
  const all = await tp.getAll();
  check("node_svc" in all, "listed");
  const base = Math.min(...(await Promise.all([1, 2, 3].map(() => timedRequest(proxy.listen)))));
  const toxic = await proxy.addToxic({ name: "slow", type: "latency", stream: "downstream", toxicity: 1, attributes: { latency: 300, jitter: 0 } });
  check(toxic.name === "slow" && toxic.attributes.latency === 300, "toxic " + JSON.stringify(toxic));
  const slow = await timedRequest(proxy.listen);
  console.log(`base ${base.toFixed(1)} ms, with latency toxic ${slow.toFixed(1)} ms`);
  // The toxic holds every response at least 300 ms; the base (first requests, new
  // connections) can itself be slow on a loaded machine, so bound the slow request alone
  // from below and the difference from above.
  check(slow >= 295 && slow - base <= 600, "added latency " + (slow - base) + ", slow " + slow);
  const fetched = await proxy.getToxic("slow");
  check(fetched.type === "latency", "getToxic");
  const updated = await fetched.update({ attributes: { latency: 10, jitter: 0 }, toxicity: 1 });
  check(updated.attributes.latency === 10, "toxic update " + JSON.stringify(updated));
  await fetched.remove();
  let gone = false;
  try { await proxy.getToxic("slow"); } catch (e) { gone = e instanceof ToxiproxyError; }
  check(gone, "toxic removed");
  // Down and up: refused right after the API answered, served right after re-enabling.
  const down = await proxy.update({ enabled: false, listen: proxy.listen, upstream });
  check(down.enabled === false, "disabled");
  check(await refused(proxy.listen), "connect refused after disable");
  const up = await down.update({ enabled: true, listen: proxy.listen, upstream });
  check(up.enabled === true && (await timedRequest(up.listen)) < 200, "re-enabled");
  // Errors surface as ToxiproxyError.
  let failed = false;
  try { await tp.get("no_such_proxy"); } catch (e) { failed = e instanceof ToxiproxyError; }
  check(failed, "404 is an error");
  const populated = await tp.populate([{ name: "node_svc", listen: up.listen, upstream }, { name: "node_two", listen: "127.0.0.1:0", upstream }]);
  check("node_svc" in populated && "node_two" in populated, "populate " + Object.keys(populated));
  await tp.reset();
  await (await tp.get("node_two")).remove();
  await (await tp.get("node_svc")).remove();
  check(Object.keys(await tp.getAll()).length === 0, "all removed");
  console.log("toxiproxy-node-client: all checks passed");
}

main().catch((e) => { console.error(e); process.exit(1); });
