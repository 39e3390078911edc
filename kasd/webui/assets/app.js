// qkas web page: polls the feed (api/feed) with the client JWT kept in sessionStorage, updates the
// tables in place (keyed rows, text changed only where it changed: no layout shift, focus kept),
// and in the graph view runs a Prometheus query_range through the tunnel every few seconds and
// draws it with uPlot, with the round trip of each query next to it. No framework, no build.
'use strict';
(function () {
  const TOKEN_KEY = 'qkas.jwt';
  const FEED_TIMEOUT_MS = 5000;
  const QUERY_TIMEOUT_MS = 15000;
  const MAX_SERIES = 12;
  const RTT_KEEP = 120;
  const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b',
    '#e377c2', '#7f7f7f', '#bcbd22', '#17becf', '#0b3d91', '#a05195'];

  const $ = (id) => document.getElementById(id);
  const state = {
    token: '',
    pollMs: 1000,
    pollTimer: 0,
    lastFeed: null,
    agents: [],
    problem: '',
  };

  // --- token ---

  function loadToken() {
    const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
    if (m) {
      // A token in the fragment (make demo prints such a URL): keep it in this tab, take it out
      // of the address bar and the history at once.
      state.token = decodeURIComponent(m[1]);
      sessionStorage.setItem(TOKEN_KEY, state.token);
      history.replaceState(null, '', location.pathname + location.search);
    } else {
      state.token = sessionStorage.getItem(TOKEN_KEY) || '';
    }
    $('token').value = state.token;
  }

  function authHeaders() {
    return state.token ? { Authorization: 'Bearer ' + state.token } : {};
  }

  // --- formatting ---

  function fmtMs(v) {
    if (v == null || !isFinite(v)) return '—';
    if (v < 1) return v.toFixed(3) + ' ms';
    if (v < 10) return v.toFixed(2) + ' ms';
    if (v < 100) return v.toFixed(1) + ' ms';
    return Math.round(v) + ' ms';
  }
  function fmtRate(v) {
    if (v == null || !isFinite(v)) return '—';
    if (v === 0) return '0 /s';
    return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v).toString()) + ' /s';
  }
  function fmtPct(v) {
    if (v == null || !isFinite(v)) return '—';
    return (v * 100).toFixed(v < 0.1 ? 2 : 1) + ' %';
  }
  function fmtSecs(s) {
    return s >= 10 ? Math.round(s) + ' s' : s.toFixed(1) + ' s';
  }

  function setText(el, s) {
    if (el.textContent !== s) el.textContent = s;
  }

  function setProblem(msg) {
    if (state.problem === msg) return; // role=alert: announce a change once, not every poll
    state.problem = msg;
    $('problem').textContent = msg;
  }

  // syncRows makes tbody hold one row per item, in order, keyed by keyOf: existing rows are
  // updated in place by fill, new ones made by build, rows of items that went away removed.
  function syncRows(tbody, items, keyOf, build, fill) {
    const existing = new Map();
    for (const tr of Array.from(tbody.rows)) existing.set(tr.dataset.key, tr);
    let prev = null;
    for (const it of items) {
      const key = keyOf(it);
      let tr = existing.get(key);
      if (tr) {
        existing.delete(key);
      } else {
        tr = document.createElement('tr');
        tr.dataset.key = key;
        build(tr);
      }
      fill(tr, it);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of existing.values()) tr.remove();
  }

  // cells adds n cells to tr: the first a row header, then tds whose classes are given.
  function cells(tr, classes) {
    const th = document.createElement('th');
    th.scope = 'row';
    tr.appendChild(th);
    for (const c of classes) {
      const td = document.createElement('td');
      if (c) td.className = c;
      tr.appendChild(td);
    }
  }

  function setBadge(cell, value) {
    let b = cell.firstElementChild;
    if (!b) {
      b = document.createElement('span');
      cell.appendChild(b);
    }
    const cls = 'badge s-' + value;
    if (b.className !== cls) b.className = cls;
    setText(b, value);
  }

  // --- feed ---

  async function poll() {
    clearTimeout(state.pollTimer);
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FEED_TIMEOUT_MS);
    try {
      const filter = $('agent-filter').value.trim();
      const url = 'api/feed' + (filter ? '?agent=' + encodeURIComponent(filter) : '');
      const resp = await fetch(url, { headers: authHeaders(), cache: 'no-store', signal: ctl.signal });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        if (resp.status === 401) {
          setProblem(state.token ? 'The token was refused (' + (body.message || 'unauthenticated') + '). Paste a valid client JWT.' :
            'Paste a client JWT to see the fleet.');
        } else {
          setProblem('kasd answered ' + resp.status + ': ' + (body.message || resp.statusText));
        }
      } else {
        const feed = await resp.json();
        setProblem('');
        render(feed);
        state.pollMs = Math.min(Math.max(feed.poll_ms || 1000, 100), 2000);
      }
    } catch (e) {
      setProblem('kasd did not answer: ' + (e.name === 'AbortError' ? 'timed out' : e.message) + '. Retrying.');
    } finally {
      clearTimeout(timer);
      state.pollTimer = setTimeout(poll, state.pollMs);
    }
  }

  function render(feed) {
    const st = feed.status;
    state.lastFeed = feed;
    setText($('self-id'), st.instance.id);
    document.title = 'qkas · ' + st.instance.id;
    setText($('updated'), 'Updated ' + new Date(st.time).toLocaleTimeString() + ' · every ' + fmtSecs(feed.poll_ms / 1000));
    renderInstances(st);
    renderRoutes(st, feed.rates);
    renderAgents(st);
    updateAgentChoices(st.agents);
  }

  function renderInstances(st) {
    const held = new Map(); // instance -> [agents, connections]
    for (const a of st.agents) {
      for (const h of a.holders) {
        const v = held.get(h.instance) || [0, 0];
        v[0]++;
        v[1] += h.connections;
        held.set(h.instance, v);
      }
    }
    const rows = [{ self: true, id: st.instance.id, inst: st.instance }];
    for (const p of st.peers || []) rows.push({ self: false, id: p.id, peer: p });
    syncRows($('instances').tBodies[0], rows, (r) => r.id,
      (tr) => cells(tr, ['', '', 'num', 'num', 'num', 'num', '', 'mono']),
      (tr, r) => {
        tr.classList.toggle('self', r.self);
        tr.dataset.instance = r.id;
        const c = tr.cells;
        setText(c[0], r.id);
        if (r.self) {
          const i = r.inst;
          setBadge(c[1], i.state);
          setBadge(c[2], i.lease);
          setText(c[3], String(i.agents));
          setText(c[4], String(i.connections));
          setText(c[5], '—');
          setText(c[6], '—');
          setText(c[7], i.version);
          setText(c[8], i.api_addr || '');
        } else {
          const p = r.peer;
          const h = held.get(p.id) || [0, 0];
          setBadge(c[1], p.state);
          setBadge(c[2], 'held'); // listed in the registry: its lease is alive
          setText(c[3], String(h[0]));
          setText(c[4], String(h[1]));
          setText(c[5], p.link ? fmtMs(p.link.rtt_ms) : '—');
          setText(c[6], p.link ? fmtPct(p.link.loss) : '—');
          setText(c[7], p.version || '');
          setText(c[8], p.api_addr || '');
        }
        c[1].dataset.state = r.self ? r.inst.state : r.peer.state;
      });
  }

  const ROUTE_NAMES = { local: 'local', forwarded: 'forwarded', none: 'no holder' };

  function renderRoutes(st, rates) {
    const rateBy = new Map((rates.routes || []).map((r) => [r.route, r]));
    syncRows($('route-table').tBodies[0], st.routes, (r) => r.route,
      (tr) => cells(tr, ['num', 'num', 'num', 'mono', 'num', 'num', 'num']),
      (tr, r) => {
        const rr = rateBy.get(r.route) || {};
        const c = tr.cells;
        tr.dataset.route = r.route;
        setText(c[0], ROUTE_NAMES[r.route] || r.route);
        setText(c[1], fmtRate(rr.requests_per_s));
        setText(c[2], fmtRate(rr.errors_per_s));
        setText(c[3], rr.requests_per_s ? fmtPct(rr.error_ratio) : '—');
        const codes = Object.entries(rr.by_code_per_s || {}).sort((a, b) => a[0].localeCompare(b[0]));
        setText(c[4], codes.length ? codes.map(([k, v]) => k + ' ' + fmtRate(v)).join(', ') : '—');
        const l = r.latency;
        setText(c[5], l.samples ? fmtMs(l.p50_ms) : '—');
        setText(c[6], l.samples ? fmtMs(l.p99_ms) : '—');
        setText(c[7], String(l.samples));
      });
    setText($('rate-window'), rates.window_s ? fmtSecs(rates.window_s) : '—');
    setText($('inflight'), String(st.inflight));
    const errs = Object.entries(rates.api_errors_per_s || {}).sort((a, b) => a[0].localeCompare(b[0]));
    setText($('api-errors'), errs.length ? errs.map(([k, v]) => k + ' ' + fmtRate(v)).join(', ') : 'none');
  }

  function renderAgents(st) {
    const tbl = $('agent-table');
    tbl.tBodies[1].hidden = st.agents.length > 0;
    const n = st.agents_matched;
    setText($('agent-count'), st.agents.length < n ?
      'Showing ' + st.agents.length + ' of ' + n.toLocaleString() + ' agents (the first by id); filter to find the others.' :
      n + (n === 1 ? ' agent' : ' agents') + ($('agent-filter').value.trim() ? ' match.' : '.'));
    syncRows(tbl.tBodies[0], st.agents, (a) => a.id,
      (tr) => cells(tr, ['', 'num', '', 'num multi', 'num multi', 'num', '', 'multi']),
      (tr, a) => {
        const c = tr.cells;
        tr.dataset.agent = a.id;
        setText(c[0], a.id);
        setText(c[1], a.holders.map((h) => h.instance + ' ×' + h.connections).join(', '));
        setText(c[2], String(a.connections.length));
        const transports = [...new Set(a.connections.map((x) => x.transport))];
        setText(c[3], transports.length ? transports.join(', ') : '—');
        setText(c[4], a.connections.length ? a.connections.map((x) => fmtMs(x.link.rtt_ms) + (x.silent ? ' (silent)' : '')).join('\n') : '—');
        setText(c[5], a.connections.length ? a.connections.map((x) => fmtPct(x.link.loss)).join('\n') : '—');
        setText(c[6], String(a.inflight));
        setText(c[7], a.services.length ? a.services.join(', ') : '—');
        setText(c[8], a.connections.length ? a.connections.map((x) => (x.replica || '?') + ' ' + x.agent_version).join('\n') : '—');
      });
  }

  // --- graph view ---

  const graph = {
    running: false,
    timer: 0,
    busy: false,
    chart: null,
    chartKey: '',
    rttChart: null,
    rtts: [], // [unix seconds, ms]
    count: 0,
    errors: 0,
    params: null,
  };

  function updateAgentChoices(agents) {
    const ids = agents.map((a) => a.id);
    state.agents = agents;
    const sel = $('g-agent');
    const have = Array.from(sel.options).map((o) => o.value);
    if (have.join('\n') !== ids.join('\n')) {
      const keep = sel.value;
      sel.replaceChildren(...ids.map((id) => new Option(id, id)));
      if (ids.includes(keep)) sel.value = keep;
      updateServiceChoices();
    }
  }

  function updateServiceChoices() {
    const a = state.agents.find((x) => x.id === $('g-agent').value);
    const services = a ? a.services : [];
    const list = $('g-services');
    if (Array.from(list.options).map((o) => o.value).join('\n') !== services.join('\n')) {
      list.replaceChildren(...services.map((s) => new Option(s, s)));
    }
    const input = $('g-service');
    if (services.length && !services.includes(input.value)) {
      input.value = services.includes('prometheus') ? 'prometheus' : services[0];
    }
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
  }

  function axes(unit) {
    const fg = cssVar('--muted');
    const grid = cssVar('--line');
    const y = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, size: unit ? 66 : 56 };
    if (unit) y.values = (u, vals) => vals.map((v) => v + ' ' + unit);
    return [{ stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } }, y];
  }

  function sizeOf(el) {
    return { width: Math.max(el.clientWidth, 100), height: el.clientHeight || 300 };
  }

  function startGraph(ev) {
    if (ev) ev.preventDefault();
    const agent = $('g-agent').value;
    const service = $('g-service').value.trim();
    const query = $('g-query').value.trim();
    if (!agent || !service || !query) {
      graphMessage('Choose an agent and a service, and type a PromQL query.', true);
      return;
    }
    graph.params = { agent, service, query, range: +$('g-range').value, every: +$('g-every').value };
    graph.running = true;
    graph.count = 0;
    graph.errors = 0;
    graph.rtts = [];
    $('g-stop').disabled = false;
    graphMessage('Querying ' + service + ' on ' + agent + ' every ' + fmtSecs(graph.params.every / 1000) + '…', false);
    clearTimeout(graph.timer);
    runQuery();
  }

  function stopGraph() {
    graph.running = false;
    clearTimeout(graph.timer);
    $('g-stop').disabled = true;
    graphMessage('Stopped.', false);
  }

  function graphMessage(msg, bad) {
    const el = $('g-msg');
    el.classList.toggle('bad', !!bad);
    setText(el, msg);
  }

  function proxyURL(p) {
    const step = Math.max(1, Math.ceil(p.range / 300));
    const now = Date.now() / 1000;
    const end = Math.floor(now / step) * step + step;
    const start = end - p.range;
    const q = new URLSearchParams({ query: p.query, start: String(start), end: String(end), step: String(step) });
    const path = '../api/v1/agents/' + encodeURIComponent(p.agent) + '/proxy/' + encodeURIComponent(p.service) +
      '/api/v1/query_range?' + q.toString();
    return new URL(path, location.href).toString();
  }

  async function runQuery() {
    if (!graph.running) return;
    const p = graph.params;
    if (!graph.busy) {
      graph.busy = true;
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), QUERY_TIMEOUT_MS);
      const t0 = performance.now();
      let body = null;
      let err = '';
      let reqID = '';
      try {
        const resp = await fetch(proxyURL(p), { headers: authHeaders(), cache: 'no-store', signal: ctl.signal });
        reqID = resp.headers.get('Qkas-Request-Id') || '';
        const text = await resp.text();
        try { body = JSON.parse(text); } catch (e) { body = null; }
        if (!resp.ok) {
          if (body && body.error && body.message) err = resp.status + ' ' + body.error + ': ' + body.message; // qkas
          else if (body && body.error) err = resp.status + ' ' + (body.errorType || 'error') + ': ' + body.error; // Prometheus
          else err = resp.status + ' ' + resp.statusText;
        } else if (!body || body.status !== 'success' || !body.data) {
          err = 'not a Prometheus query_range answer (is ' + p.service + ' a Prometheus?)';
        }
      } catch (e) {
        err = e.name === 'AbortError' ? 'timed out after ' + QUERY_TIMEOUT_MS / 1000 + ' s' : e.message;
      } finally {
        clearTimeout(timer);
      }
      const rtt = performance.now() - t0;
      graph.busy = false;
      if (!graph.running || p !== graph.params) return; // stopped or restarted meanwhile
      graph.count++;
      graph.rtts.push([Date.now() / 1000, rtt]);
      if (graph.rtts.length > RTT_KEEP) graph.rtts.shift();
      if (err) {
        graph.errors++;
        graphMessage('Query failed: ' + err, true);
      } else {
        draw(body.data, p);
      }
      renderRTT(reqID);
    }
    graph.timer = setTimeout(runQuery, p.every);
  }

  function seriesLabel(metric) {
    const name = metric.__name__ || '';
    const labels = Object.keys(metric).filter((k) => k !== '__name__').sort()
      .map((k) => k + '="' + metric[k] + '"');
    return name + '{' + labels.join(', ') + '}';
  }

  function draw(data, p) {
    let result = data.result || [];
    if (data.resultType !== 'matrix') {
      graphMessage('The answer is a ' + data.resultType + ', not a range of samples.', true);
      return;
    }
    const total = result.length;
    result = result.slice(0, MAX_SERIES);
    const xs = new Set();
    for (const r of result) for (const v of r.values) xs.add(+v[0]);
    const x = Array.from(xs).sort((a, b) => a - b);
    const index = new Map(x.map((t, i) => [t, i]));
    const labels = result.map((r) => seriesLabel(r.metric));
    let points = 0;
    const ys = result.map((r) => {
      const y = new Array(x.length).fill(null);
      for (const [t, v] of r.values) {
        const f = parseFloat(v);
        y[index.get(+t)] = isFinite(f) ? f : null;
        points++;
      }
      return y;
    });
    const el = $('chart');
    const key = labels.join('\n');
    if (!graph.chart || graph.chartKey !== key) {
      if (graph.chart) graph.chart.destroy();
      else el.replaceChildren(); // the placeholder text
      const opts = {
        ...sizeOf(el),
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: axes(''),
        series: [{}].concat(labels.map((l, i) => ({ label: l, stroke: PALETTE[i % PALETTE.length], width: 1.5, points: { show: false } }))),
      };
      graph.chart = new uPlot(opts, [x, ...ys], el);
      graph.chartKey = key;
      renderLegend(labels);
    } else {
      graph.chart.setData([x, ...ys]);
    }
    el.dataset.points = String(points);
    el.dataset.series = String(result.length);
    el.setAttribute('aria-label', 'Graph of ' + p.query + ': ' + result.length + ' series, ' + points + ' points' +
      (result.length && ys[0].length ? ', latest value of the first ' + fmtValue(last(ys[0])) : ''));
    const shown = total > MAX_SERIES ? ' (showing ' + MAX_SERIES + ' of ' + total + ' series)' : '';
    graphMessage(total ? points + ' points in ' + result.length + ' series from ' + p.service + ' on ' + p.agent + shown + '.' :
      'The query matched no series.', false);
  }

  function last(arr) {
    for (let i = arr.length - 1; i >= 0; i--) if (arr[i] != null) return arr[i];
    return null;
  }
  function fmtValue(v) {
    return v == null ? 'none' : Number.isInteger(v) ? String(v) : v.toPrecision(4);
  }

  function renderLegend(labels) {
    const ul = $('legend');
    ul.replaceChildren(...labels.map((l, i) => {
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = PALETTE[i % PALETTE.length];
      li.append(sw, document.createTextNode(l));
      li.title = l;
      return li;
    }));
  }

  // routeOf says how this kasd reaches agent: over its own connection, or through a peer.
  function routeOf(agent) {
    const a = state.agents.find((x) => x.id === agent);
    if (!a || !a.holders.length) return 'no holder';
    if (a.holders.some((h) => h.local)) return 'local';
    return 'via ' + a.holders.map((h) => h.instance).join(' or ');
  }

  function renderRTT(reqID) {
    const ms = graph.rtts.map((r) => r[1]).sort((a, b) => a - b);
    const q = (f) => ms.length ? ms[Math.min(ms.length - 1, Math.ceil(f * ms.length) - 1)] : null;
    setText($('rtt-last'), graph.rtts.length ? fmtMs(graph.rtts[graph.rtts.length - 1][1]) : '—');
    setText($('rtt-p50'), fmtMs(q(0.5)));
    setText($('rtt-p99'), fmtMs(q(0.99)));
    setText($('g-count'), String(graph.count));
    setText($('g-errors'), String(graph.errors));
    setText($('g-reqid'), reqID || '—');
    setText($('g-route'), routeOf(graph.params.agent));
    $('g-reqid').title = reqID;
    const el = $('rtt-chart');
    const data = [graph.rtts.map((r) => r[0]), graph.rtts.map((r) => r[1])];
    if (!graph.rttChart) {
      graph.rttChart = new uPlot({
        ...sizeOf(el),
        legend: { show: false },
        cursor: { show: false },
        scales: { x: { time: true } },
        axes: axes('ms'),
        series: [{}, { label: 'round trip', stroke: cssVar('--accent'), width: 1.5, points: { show: true, size: 3 } }],
      }, data, el);
    } else {
      graph.rttChart.setData(data);
    }
  }

  function watchSize() {
    if (!window.ResizeObserver) return;
    const ro = new ResizeObserver(() => {
      if (graph.chart) graph.chart.setSize(sizeOf($('chart')));
      if (graph.rttChart) graph.rttChart.setSize(sizeOf($('rtt-chart')));
    });
    ro.observe($('chart'));
    ro.observe($('rtt-chart'));
  }

  // --- wiring ---

  function init() {
    loadToken();
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      state.token = $('token').value.trim();
      if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
      else sessionStorage.removeItem(TOKEN_KEY);
      poll();
    });
    $('forget').addEventListener('click', () => {
      state.token = '';
      $('token').value = '';
      sessionStorage.removeItem(TOKEN_KEY);
      stopGraph();
      poll();
    });
    $('graph-form').addEventListener('submit', startGraph);
    $('g-stop').addEventListener('click', stopGraph);
    $('g-agent').addEventListener('change', updateServiceChoices);
    let filterTimer = 0;
    $('agent-filter').addEventListener('input', () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(poll, 300);
    });
    watchSize();
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
