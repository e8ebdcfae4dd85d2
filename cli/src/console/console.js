// cb's operator console: projects at a glance, failing deliveries with their actions, and
// one file's history drawn on a time axis. Plain browser JavaScript, no build step, no
// dependency, served by cbd with a Content-Security-Policy that allows nothing inline.
//
// Two rules hold everywhere below:
// - The token lives in this tab's sessionStorage and leaves it only in the Authorization
//   header of a fetch to this origin; it is never put in a URL, a cookie or the page.
// - Whatever cbd answers is customer data (field values, ids, URLs, receivers' replies) and
//   is rendered as text: createTextNode/textContent, and attributes through `attrs`, which
//   refuses the ones that load or run something. Nothing is parsed as HTML, nothing is
//   evaluated.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const TOKEN_KEY = 'cb.console.token';
  // Records per history page: enough for a picture, small enough to draw at once.
  const HISTORY_PAGE = 500;
  // Items per list request.
  const LIST_PAGE = 50;
  // Past this many marks of one kind per pixel of a lane, marks are drawn as counts per
  // bucket of this many pixels: a picture of 10,000 attempts stays a picture, and fast.
  const BUCKET_PX = 4;
  const STATES = ['coalescing', 'pending', 'sent', 'retrying', 'abandoned'];

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // ---------------------------------------------------------------------------------------
  // Building the page: text and safe attributes only.

  // Attributes that load, link or run something are never set from here.
  const UNSAFE_ATTR = /^(on|style$|href$|xlink:href$|src$|srcdoc$|action$|formaction$)/i;

  function attrs(node, map) {
    for (const [name, value] of Object.entries(map || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (UNSAFE_ATTR.test(name)) throw new Error('refusing to set attribute ' + name);
      node.setAttribute(name, String(value));
    }
    return node;
  }

  function add(parent, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) {
      for (const c of child) add(parent, c);
    } else if (child instanceof Node) {
      parent.appendChild(child);
    } else {
      parent.appendChild(document.createTextNode(String(child)));
    }
  }

  function el(tag, map, ...children) {
    const node = attrs(document.createElement(tag), map);
    add(node, children);
    return node;
  }

  function svg(tag, map, ...children) {
    const node = attrs(document.createElementNS(SVG_NS, tag), map);
    add(node, children);
    return node;
  }

  function button(label, onClick, map) {
    const b = el('button', Object.assign({ type: 'button' }, map), label);
    b.addEventListener('click', onClick);
    return b;
  }

  function pre(value) {
    return el('pre', {}, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function timeText(ms) {
    return typeof ms === 'number' ? new Date(ms).toISOString() : '';
  }

  function say(text, kind) {
    const s = $('status');
    s.textContent = text;
    s.className = kind || '';
  }

  function report(e) {
    say(e instanceof ApiError ? e.message : 'error: ' + e, 'error');
  }

  // ---------------------------------------------------------------------------------------
  // The API: the token in a header, JSON both ways, errors as `{"error","detail"}`.

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && body.detail ? body.detail : 'HTTP ' + status;
      const code = body && body.error ? body.error + ': ' : '';
      super((status ? status + ' ' : '') + code + detail);
      this.status = status;
      this.body = body;
    }
  }

  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY),
    set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
    forget: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const s = q.toString();
    return s ? '?' + s : '';
  }

  async function api(method, path, body) {
    const t = token.get();
    if (!t) {
      showLogin();
      throw new ApiError(401, { error: 'unauthorized', detail: 'no token' });
    }
    const headers = { Authorization: 'Bearer ' + t, Accept: 'application/json' };
    const init = {
      method,
      headers,
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
      referrerPolicy: 'no-referrer',
    };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { error: 'unreachable', detail: 'cbd did not answer (' + e.message + ')' });
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: 'not_json', detail: text.slice(0, 500) };
    }
    if (response.status === 401) {
      token.forget();
      showLogin('cbd refused the token (401): type it again.');
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const filePath = (project, fileId) => '/v1/files/' + enc(project) + '/' + enc(fileId);
  const callbackPath = (project, name) =>
    '/v1/projects/' + enc(project) + '/callbacks/' + enc(name);

  // ---------------------------------------------------------------------------------------
  // The token.

  function showLogin(message) {
    $('app').hidden = true;
    $('forget').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').focus();
  }

  async function start() {
    if (!token.get()) {
      showLogin();
      return;
    }
    $('login').hidden = true;
    $('app').hidden = false;
    $('forget').hidden = false;
    say('');
    await Promise.all([loadProjects(true), loadDeliveries(true)]);
  }

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $('token').value.trim();
    $('token').value = '';
    if (!value) return;
    token.set(value);
    start().catch(report);
  });

  $('forget').addEventListener('click', () => {
    token.forget();
    showLogin('The token is forgotten.');
  });

  // ---------------------------------------------------------------------------------------
  // Projects: counts per state, callbacks paused, disabled, failing origins.

  let projectsNext = null;

  function stateCounts(machines) {
    const held = STATES.filter((s) => machines && machines[s] > 0);
    if (!held.length) return el('span', { class: 'hint' }, 'no machines');
    return el('span', { class: 'counts' },
      held.map((s) => el('span', { class: 'count s-' + s }, s + ' ' + machines[s])));
  }

  async function loadProjects(fresh) {
    if (fresh) projectsNext = null;
    const page = await api('GET', '/v1/projects' + query({ limit: LIST_PAGE, after: projectsNext }));
    const box = $('projects');
    if (fresh) box.replaceChildren();
    for (const p of page.items || []) box.appendChild(projectCard(p));
    if (fresh && !(page.items || []).length) add(box, el('p', { class: 'hint' }, 'No projects yet.'));
    projectsNext = page.next;
    $('projects-more').hidden = !page.next;
  }

  function projectCard(p) {
    const failing = new Map();
    const rows = [];
    for (const c of p.callbacks || []) {
      const m = c.machines || {};
      const bad = (m.retrying || 0) + (m.abandoned || 0);
      if (bad && c.origin) failing.set(c.origin, (failing.get(c.origin) || 0) + bad);
      rows.push(callbackRow(p.project, c));
    }
    const origins = [...failing.entries()].map(([o, n]) =>
      el('li', {}, o + ' — ' + n + ' failing'));
    return el('div', { class: 'card', 'data-project': p.project },
      el('h3', {}, p.project, ' ', stateCounts(p.machines)),
      el('table', { class: 'callbacks' },
        el('thead', {}, el('tr', {},
          ['Callback', 'Target', 'Machines', 'Status', ''].map((h) => el('th', {}, h)))),
        el('tbody', {}, rows)),
      origins.length
        ? el('div', { class: 'failing' }, el('strong', {}, 'Failing origins'), el('ul', {}, origins))
        : null);
  }

  function callbackRow(project, c) {
    const perFile = c.callback.startsWith('file:');
    const status = [];
    if (c.paused_by != null) status.push(el('span', { class: 'flag paused' }, 'paused (seq ' + c.paused_by + ')'));
    if (c.disabled_by != null) {
      status.push(el('span', { class: 'flag disabled' }, 'disabled by a 410 (seq ' + c.disabled_by + ')'));
    }
    if (!status.length) status.push(perFile ? 'per-file' : 'active');
    const actions = [];
    if (!perFile) {
      const paused = c.paused_by != null;
      actions.push(button(paused ? 'Resume' : 'Pause', () =>
        pauseCallback(project, c.callback, !paused).catch(report)));
      actions.push(button('Send test', () => testCallback(project, c.callback).catch(report)));
    }
    actions.push(button('Failing', () => {
      $('f-state').value = 'failing';
      $('f-project').value = project;
      $('f-callback').value = c.callback;
      $('f-origin').value = '';
      loadDeliveries(true).catch(report);
    }));
    return el('tr', { 'data-callback': c.callback },
      el('td', {}, c.callback),
      el('td', { class: 'url' }, c.url || '(each file gives its own)'),
      el('td', {}, stateCounts(c.machines)),
      el('td', {}, status),
      el('td', { class: 'actions' }, actions));
  }

  async function pauseCallback(project, name, pausing) {
    const r = await api('POST', callbackPath(project, name) + (pausing ? '/pause' : '/resume'));
    say((pausing ? 'paused ' : 'resumed ') + project + '/' + name + ' (seq ' + r.seq + ')', 'ok');
    await loadProjects(true);
  }

  async function testCallback(project, name) {
    const gen = openDetail('Test send to ' + project + '/' + name);
    const body = $('detail-body');
    add(body, el('p', { class: 'hint' }, 'sending…'));
    let answer;
    try {
      answer = await api('POST', callbackPath(project, name) + '/test');
    } catch (e) {
      if (gen !== detailGen) return;
      body.replaceChildren(el('p', { class: 'error' }, e.message));
      if (e.body) add(body, pre(e.body));
      return;
    }
    if (gen !== detailGen) return;
    const o = answer.outcome;
    const summary = [
      'outcome ' + (typeof o === 'object' && o !== null ? JSON.stringify(o) : String(o)),
      answer.outcome_class ? '(' + answer.outcome_class + ')' : '',
      answer.latency_ms != null ? answer.latency_ms + ' ms' : '',
      answer.seq != null ? 'recorded at seq ' + answer.seq : '',
    ].filter(Boolean).join(' · ');
    body.replaceChildren(el('p', {}, summary));
    if (answer.detail) add(body, el('p', {}, answer.detail));
    add(body, pre(answer));
  }

  $('projects-refresh').addEventListener('click', () => loadProjects(true).catch(report));
  $('projects-more').addEventListener('click', () => loadProjects(false).catch(report));

  // ---------------------------------------------------------------------------------------
  // Deliveries: the failing ones by default, filtered, a page at a time, with their actions.

  // The list being shown: the states still to page through and the cursor in the current.
  let listing = null;

  async function loadDeliveries(fresh) {
    if (fresh) {
      const state = $('f-state').value;
      listing = {
        states: state === 'failing' ? ['retrying', 'abandoned'] : [state],
        i: 0,
        after: null,
        project: $('f-project').value.trim(),
        callback: $('f-callback').value.trim(),
        origin: $('f-origin').value.trim(),
      };
      $('deliveries').tBodies[0].replaceChildren();
    }
    const l = listing;
    const tbody = $('deliveries').tBodies[0];
    while (l.i < l.states.length) {
      const page = await api('GET', '/v1/deliveries' + query({
        state: l.states[l.i],
        project: l.project,
        callback: l.callback,
        origin: l.origin,
        limit: LIST_PAGE,
        after: l.after,
      }));
      if (l !== listing) return;
      for (const d of page.items || []) tbody.appendChild(deliveryRow(d));
      if (page.next) {
        l.after = page.next;
      } else {
        l.i += 1;
        l.after = null;
      }
      if ((page.items || []).length) break;
    }
    $('deliveries-more').hidden = l.i >= l.states.length;
    $('deliveries-empty').hidden = tbody.rows.length > 0;
  }

  function outcomeText(o) {
    if (!o) return '';
    return o.outcome + ' (' + o.class + ')' + (o.detail ? ' — ' + o.detail : '');
  }

  function deliveryRow(d) {
    const stateCell = el('td', { class: 'state s-' + d.state }, d.state);
    const outcomeCell = el('td', { class: 'outcome' }, outcomeText(d.last_outcome));
    const whenCell = el('td', {}, d.next_time || d.abandoned_time || d.due_time || d.sent_time || '');
    const attemptsCell = el('td', {}, d.attempts != null ? d.attempts : '');
    const row = el('tr', { 'data-file': d.file, 'data-callback': d.callback });
    const redeliver = button('Redeliver', async () => {
      redeliver.disabled = true;
      try {
        const r = await api('POST', filePath(d.project, d.file_id) + '/redeliver' + query({ callback: d.callback }));
        stateCell.textContent = 'redeliver requested (seq ' + r.seq + ')';
        await follow(d, { stateCell, outcomeCell, whenCell, attemptsCell });
        await loadProjects(true);
      } catch (e) {
        report(e);
      } finally {
        redeliver.disabled = false;
      }
    }, { class: 'redeliver' });
    add(row, [
      el('td', {}, button(d.file, () => openTimeline(d.project, d.file_id, d.delivery).catch(report), { class: 'link' })),
      el('td', {}, d.callback),
      stateCell,
      attemptsCell,
      whenCell,
      outcomeCell,
      el('td', { class: 'actions' }, redeliver,
        button('Timeline', () => openTimeline(d.project, d.file_id, d.delivery).catch(report))),
    ]);
    return row;
  }

  // After a redeliver, the row follows the machine until the attempt it started is over.
  async function follow(d, cells) {
    for (let i = 0; i < 120; i++) {
      await sleep(500);
      const f = await api('GET', filePath(d.project, d.file_id));
      const m = (f.machines || []).find((x) => x.callback === d.callback);
      if (!m) return;
      cells.stateCell.textContent = m.state;
      cells.stateCell.className = 'state s-' + m.state;
      cells.outcomeCell.textContent = outcomeText(m.last_outcome);
      cells.whenCell.textContent = m.next_time || m.sent_time || m.abandoned_time || m.due_time || '';
      cells.attemptsCell.textContent = m.attempts != null ? m.attempts : '';
      if (m.state !== 'pending' && m.state !== 'coalescing') return;
    }
  }

  $('deliveries-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    loadDeliveries(true).catch(report);
  });
  $('deliveries-more').addEventListener('click', () => loadDeliveries(false).catch(report));

  $('bulk-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { project: $('b-project').value.trim() };
    const callback = $('b-callback').value.trim();
    const state = $('b-state').value;
    if (callback) body.callback = callback;
    if (state) body.state = state;
    try {
      const r = await api('POST', '/v1/redeliver', body);
      say(r.count
        ? r.count + ' redelivers appended (seq ' + r.first_seq + '–' + r.last_seq + ')' + (r.more ? '; more remain: send again' : '')
        : 'nothing to redeliver', 'ok');
      await loadDeliveries(true);
    } catch (e) {
      report(e);
    }
  });

  // ---------------------------------------------------------------------------------------
  // A file's timeline: one page of its history on one time axis.

  const timeline = { project: null, fileId: null, from: 0, stack: [], next: null };

  async function openTimeline(project, fileId, from) {
    timeline.project = project;
    timeline.fileId = fileId;
    timeline.stack = [];
    $('t-project').value = project;
    $('t-file').value = fileId;
    $('t-from').value = from ? String(from) : '';
    await loadTimeline(from || 0);
    $('timeline-section').scrollIntoView();
  }

  async function loadTimeline(from) {
    const h = await api('GET', filePath(timeline.project, timeline.fileId) + '/history' +
      query({ from: from || null, limit: HISTORY_PAGE }));
    timeline.from = from;
    timeline.next = h.next;
    $('timeline-nav').hidden = false;
    $('legend').hidden = false;
    $('t-first').disabled = !from;
    $('t-earlier').disabled = !from && !timeline.stack.length;
    $('t-later').disabled = h.next == null;
    const seqs = (h.steps || []).map((s) => s.seq).filter((s) => typeof s === 'number');
    const info = [timeline.project + '/' + timeline.fileId];
    info.push(seqs.length ? seqs.length + ' records, seq ' + seqs[0] + '–' + seqs[seqs.length - 1] : 'no records');
    if (h.base) info.push('kept history begins after seq ' + h.base.seq);
    $('t-info').textContent = info.join(' · ');
    draw(h);
  }

  $('file-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const from = parseInt($('t-from').value, 10);
    openTimeline($('t-project').value.trim(), $('t-file').value.trim(), from > 0 ? from : 0).catch(report);
  });
  $('t-first').addEventListener('click', () => {
    timeline.stack = [];
    loadTimeline(0).catch(report);
  });
  $('t-earlier').addEventListener('click', () => {
    loadTimeline(timeline.stack.length ? timeline.stack.pop() : 0).catch(report);
  });
  $('t-later').addEventListener('click', () => {
    if (timeline.next == null) return;
    timeline.stack.push(timeline.from);
    loadTimeline(timeline.next).catch(report);
  });

  // Which of a lane's marks wins the color of a bucket that holds several.
  const SEVERITY = ['abandoned', 'disabled', 'failed', 'delivered', 'redeliver', 'pause', 'resume',
    'config', 'start', 'filtered', 'change'];

  // The page's steps as lanes of marks and bands, in time.
  function layout(h) {
    // Keyed apart from callback names, so that a callback named "changes" has a lane too.
    const lanes = new Map();
    const changes = { label: 'changes', marks: [], bands: [], retries: [] };
    lanes.set('', changes);
    const lane = (callback) => {
      if (!lanes.has('cb ' + callback)) {
        lanes.set('cb ' + callback, { label: callback, marks: [], bands: [], retries: [] });
      }
      return lanes.get('cb ' + callback);
    };
    let t0 = Infinity;
    let t1 = -Infinity;
    const span = (t) => {
      if (typeof t === 'number') {
        t0 = Math.min(t0, t);
        t1 = Math.max(t1, t);
      }
    };
    const windows = new Map();
    const paused = new Map();
    // A retry line runs from a failure to its next attempt, or to where the machine left
    // that wait (a redeliver, a pause past the horizon): callback → the open line.
    const waiting = new Map();
    const mark = (callback, cat, cls, step, label) =>
      lane(callback).marks.push({ t: step.at, cat, cls, step, label });
    for (const s of h.steps || []) {
      span(s.at);
      const machines = s.machines || [];
      for (const m of machines) lane(m.callback);
      for (const [callback, r] of waiting) {
        const m = machines.find((x) => x.callback === callback);
        if (!m || m.state !== 'retrying' || m.next_at !== r.to) {
          r.to = Math.min(r.to, s.at);
          waiting.delete(callback);
        }
      }
      const where = s.seq != null ? ' (seq ' + s.seq + ')' : ' (' + s.time + ')';
      switch (s.kind) {
        case 'change':
          changes.marks.push({ t: s.at, cat: 'change', cls: 'change', step: s, label: 'change ' + s.event + where });
          for (const f of s.filtered || []) {
            mark(f.callback, 'filtered', 'filtered', s, 'filtered (' + f.why + ')' + where);
          }
          break;
        case 'attempt': {
          const m = machines.find((x) => x.callback === s.callback);
          const abandoned = m && m.state === 'abandoned';
          const cls = s.class === 'delivered' ? 'delivered' : abandoned ? 'abandoned' : 'failed';
          mark(s.callback, 'attempt', cls, s, 'attempt ' + s.attempt + ' of v' + s.version + ' → ' +
            s.outcome + (abandoned ? ', abandoned' : '') + where);
          if (m && m.state === 'retrying' && typeof m.next_at === 'number') {
            const r = { from: s.at, to: m.next_at, step: s };
            lane(s.callback).retries.push(r);
            waiting.set(s.callback, r);
          }
          break;
        }
        case 'redeliver': {
          const names = s.callback ? [s.callback] : machines.map((m) => m.callback);
          for (const n of names) mark(n, 'operator', 'redeliver', s, 'redeliver' + where);
          break;
        }
        case 'callback_paused':
          mark(s.name, 'operator', 'pause', s, 'paused' + where);
          paused.set(s.name, s.at);
          break;
        case 'callback_resumed':
          mark(s.name, 'operator', 'resume', s, 'resumed' + where);
          if (paused.has(s.name)) {
            lane(s.name).bands.push({ from: paused.get(s.name), to: s.at, cls: 'paused', step: s });
            paused.delete(s.name);
          }
          break;
        case 'callback_put':
          mark(s.name, 'operator', 'config', s, 'callback put' + where);
          break;
        case 'callback_removed':
          mark(s.name, 'operator', 'config', s, 'callback removed' + where);
          break;
        case 'callback_disabled':
          mark(s.callback, 'operator', 'disabled', s, 'disabled by a 410' + where);
          break;
        default:
          break;
      }
      for (const a of s.attempts_started || []) {
        mark(a.callback, 'start', 'start', s, 'attempt ' + a.attempt + ' of v' + a.version + ' started' + where);
      }
      for (const m of machines) {
        if (m.state !== 'coalescing' || typeof m.due_at !== 'number') continue;
        const key = m.callback + '|' + m.delivery + '|' + m.since_at;
        const w = windows.get(key);
        if (w) {
          w.to = m.due_at;
        } else {
          const band = { from: m.since_at, to: m.due_at, cls: 'window', step: s };
          windows.set(key, band);
          lane(m.callback).bands.push(band);
        }
        span(m.since_at);
        span(m.due_at);
      }
    }
    for (const [name, from] of paused) lane(name).bands.push({ from, to: null, cls: 'paused', step: null });
    if (!(t1 >= t0)) {
      t0 = 0;
      t1 = 1;
    }
    if (t1 - t0 < 1000) {
      t0 -= 500;
      t1 += 500;
    }
    const pad = (t1 - t0) * 0.03;
    // Lanes with nothing in them on this page (a callback whose machine only sat there) stay:
    // their absence would read as "no machine".
    return { lanes: [...lanes.values()], t0: t0 - pad, t1: t1 + pad };
  }

  function draw(h) {
    const box = $('timeline');
    box.replaceChildren();
    if (!(h.steps || []).length) {
      add(box, el('p', { class: 'hint' }, 'No records on this page.'));
      return;
    }
    const { lanes, t0, t1 } = layout(h);
    const width = Math.max(box.clientWidth || 0, 720);
    const left = 150;
    const right = 16;
    const top = 30;
    const laneH = 36;
    const plotW = width - left - right;
    const height = top + lanes.length * laneH + 8;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * plotW;
    const root = svg('svg', {
      width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'img',
      'aria-label': 'timeline of ' + timeline.project + '/' + timeline.fileId,
    });

    // The axis: a few times, as precise as the page's span needs.
    const precise = t1 - t0 < 86400000;
    for (let i = 0; i <= 5; i++) {
      const t = t0 + ((t1 - t0) * i) / 5;
      const iso = new Date(t).toISOString();
      const xi = x(t);
      root.appendChild(svg('line', { class: 'grid', x1: xi, x2: xi, y1: top - 6, y2: height - 4 }));
      root.appendChild(svg('text', { class: 'axis', x: xi, y: top - 10, 'text-anchor': i === 0 ? 'start' : i === 5 ? 'end' : 'middle' },
        precise ? iso.slice(11, 23) : iso.slice(0, 16).replace('T', ' ')));
    }

    lanes.forEach((ln, i) => {
      const y = top + i * laneH;
      const mid = y + laneH / 2;
      const g = svg('g', { class: 'lane', 'data-lane': ln.label });
      g.appendChild(svg('rect', { class: i % 2 ? 'lane-bg odd' : 'lane-bg', x: 0, y, width, height: laneH }));
      g.appendChild(svg('text', { class: 'lane-label', x: 8, y: mid + 4 }, ln.label.length > 20 ? ln.label.slice(0, 19) + '…' : ln.label,
        svg('title', {}, ln.label)));
      for (const b of ln.bands) {
        const x1 = x(Math.max(b.from, t0));
        const x2 = x(b.to == null ? t1 : Math.min(b.to, t1));
        const r = svg('rect', { class: 'band ' + b.cls, x: x1, y: y + 7, width: Math.max(x2 - x1, 2), height: laneH - 14 },
          svg('title', {}, (b.cls === 'window' ? 'coalescing window, due ' : 'paused until ') + timeText(b.to)));
        if (b.step) clickable(r, () => showStep(b.step, b.cls === 'window' ? 'Coalescing window' : 'Paused'));
        g.appendChild(r);
      }
      for (const r of ln.retries) {
        const x1 = x(r.from);
        const x2 = x(Math.min(r.to, t1));
        g.appendChild(svg('line', { class: 'retry', x1, x2, y1: mid + 12, y2: mid + 12 },
          svg('title', {}, 'retry wait until ' + timeText(r.to))));
        if (r.to <= t1) g.appendChild(svg('circle', { class: 'retry-at', cx: x2, cy: mid + 12, r: 2.5 }));
      }
      drawMarks(g, ln.marks, x, mid, plotW);
      root.appendChild(g);
    });
    box.appendChild(root);
  }

  // Marks of one lane: one shape each, or, where a kind is denser than one mark per few
  // pixels, one bar per bucket with its count.
  function drawMarks(g, marks, x, mid, plotW) {
    // Later kinds are drawn over earlier ones: an outcome over the start of its attempt.
    const byCat = new Map(['start', 'filtered', 'change', 'operator', 'attempt'].map((c) => [c, []]));
    for (const m of marks) {
      if (!byCat.has(m.cat)) byCat.set(m.cat, []);
      byCat.get(m.cat).push(m);
    }
    for (const [cat, list] of byCat) {
      if (list.length <= plotW / (BUCKET_PX * 2)) {
        for (const m of list) g.appendChild(shape(m, x(m.t), mid));
        continue;
      }
      const buckets = new Map();
      for (const m of list) {
        const b = Math.floor(x(m.t) / BUCKET_PX);
        if (!buckets.has(b)) buckets.set(b, []);
        buckets.get(b).push(m);
      }
      for (const [b, inBucket] of buckets) {
        if (inBucket.length === 1) {
          g.appendChild(shape(inBucket[0], x(inBucket[0].t), mid));
          continue;
        }
        const worst = SEVERITY.find((c) => inBucket.some((m) => m.cls === c)) || inBucket[0].cls;
        const h = Math.min(6 + Math.log2(inBucket.length) * 4, 30);
        const r = svg('rect', {
          class: 'mark agg ' + cat + ' ' + worst, x: b * BUCKET_PX, y: mid - h / 2, width: BUCKET_PX, height: h,
          'data-count': inBucket.length,
        }, svg('title', {}, inBucket.length + ' ' + cat + ' marks'));
        clickable(r, () => showBucket(inBucket));
        g.appendChild(r);
      }
    }
  }

  function shape(m, cx, mid) {
    const base = { class: 'mark ' + m.cat + ' ' + m.cls, 'data-seq': m.step.seq };
    let node;
    switch (m.cat) {
      case 'change':
        node = svg('circle', Object.assign(base, { cx, cy: mid, r: 5 }));
        break;
      case 'filtered':
        node = svg('circle', Object.assign(base, { cx, cy: mid, r: 4 }));
        break;
      case 'start':
        node = svg('rect', Object.assign(base, { x: cx - 1, y: mid - 8, width: 2, height: 16 }));
        break;
      case 'attempt': {
        const r = 6;
        node = svg('polygon', Object.assign(base, {
          points: [cx, mid - r, cx + r, mid, cx, mid + r, cx - r, mid].join(' '),
        }));
        break;
      }
      default:
        // Operators' actions: a triangle pointing down from the top of the lane.
        node = svg('polygon', Object.assign(base, {
          points: [cx - 5, mid - 16, cx + 5, mid - 16, cx, mid - 7].join(' '),
        }));
    }
    node.appendChild(svg('title', {}, m.label));
    clickable(node, () => showStep(m.step, m.label));
    return node;
  }

  function clickable(node, action) {
    attrs(node, { tabindex: 0, role: 'button' });
    node.addEventListener('click', action);
    node.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        action();
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // The detail panel: a record as JSON, and the file as of that point (rewind).

  let detailGen = 0;

  function openDetail(title) {
    detailGen += 1;
    $('detail-title').textContent = title;
    $('detail-body').replaceChildren();
    $('detail').hidden = false;
    return detailGen;
  }

  $('detail-close').addEventListener('click', () => {
    detailGen += 1;
    $('detail').hidden = true;
  });

  // A bucket's marks as a list, the first BUCKET_LISTED of them: a bar of 10,000 changes
  // must not become 10,000 buttons.
  const BUCKET_LISTED = 200;

  function showBucket(marks) {
    openDetail(marks.length + ' marks');
    const list = el('ul', {});
    for (const m of marks.slice(0, BUCKET_LISTED)) {
      list.appendChild(el('li', {}, button(m.label, () => showStep(m.step, m.label), { class: 'link' })));
    }
    add($('detail-body'), list);
    if (marks.length > BUCKET_LISTED) {
      add($('detail-body'), el('p', { class: 'hint' },
        '… and ' + (marks.length - BUCKET_LISTED) + ' more: open the timeline from a later seq to see them apart.'));
    }
  }

  async function showStep(step, title) {
    const gen = openDetail(title);
    const body = $('detail-body');
    add(body, [el('h3', {}, 'Record'), pre(step)]);
    // An attempt's outcome is recorded after it: the file just before that record still has
    // the attempt in flight, and rewind shows the request it sent. Anything else: as of it.
    let to;
    let what;
    if (step.kind === 'attempt' && step.seq > 1) {
      to = step.seq - 1;
      what = 'The request this attempt sent (the file as of seq ' + to + ', the attempt in flight)';
    } else if (step.seq != null) {
      to = step.seq;
      what = 'The file as of seq ' + to + ' and the request each callback would get';
    } else {
      to = step.time;
      what = 'The file as of ' + to + ' and the request each callback would get';
    }
    const heading = el('h3', {}, what);
    const holder = el('div', {}, el('p', { class: 'hint' }, 'loading…'));
    add(body, [heading, holder]);
    let r;
    try {
      r = await api('GET', filePath(timeline.project, timeline.fileId) + '/rewind' + query({ to }));
    } catch (e) {
      if (gen === detailGen) holder.replaceChildren(el('p', { class: 'error' }, e.message));
      return;
    }
    if (gen !== detailGen) return;
    holder.replaceChildren(...rewound(r));
  }

  function rewound(r) {
    const out = [];
    out.push(el('p', {}, 'version ' + (r.version == null ? 'none' : r.version)));
    const fields = Object.entries(r.file || {});
    if (fields.length) {
      out.push(el('h4', {}, 'Snapshot'));
      out.push(el('table', { class: 'snapshot' }, el('tbody', {},
        fields.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, String(v)))))));
    }
    out.push(el('h4', {}, 'Machines'));
    out.push(pre(r.machines || []));
    for (const p of r.payloads || []) {
      const notes = ['digest ' + p.digest];
      if (p.in_flight) notes.push('sent by attempt ' + p.in_flight.attempt + ' of version ' + p.in_flight.version);
      if (p.would_send === false) notes.push('would not send: the latest change was filtered (' + p.filtered + ')');
      out.push(el('h4', { class: 'payload' }, p.callback + ': ' + p.method + ' ' + p.url));
      out.push(el('p', { class: 'hint' }, notes.join(' · ')));
      const headers = (p.headers || []).map((hd) => hd.name + ': ' + hd.value).join('\n');
      out.push(pre((headers ? headers + '\n\n' : '') + (p.body || '')));
    }
    if (!(r.payloads || []).length) out.push(el('p', { class: 'hint' }, 'No callback in force would get a request.'));
    return out;
  }

  start().catch(report);
})();
