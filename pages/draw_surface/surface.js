const surfaces = new WeakMap();
const round = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;

function redraw(s) {
  const ctx = s.canvas.getContext("2d");
  const scale = s.side * (window.devicePixelRatio || 1);
  ctx.setTransform(scale, 0, 0, scale, 0, 0);  // draw in canvas units, 0..1
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 1, 1);
  for (const stroke of s.strokes) paint(s, stroke, 0);
  s.undo.disabled = s.clear.disabled = s.strokes.length === 0;
}

function paint(s, stroke, from) {  // the stroke's segments from point `from` on (a dot if alone)
  const ctx = s.canvas.getContext("2d");
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = s.brush;
  ctx.lineCap = ctx.lineJoin = "round";
  if (stroke.length === 1) {
    ctx.beginPath();
    ctx.arc(stroke[0][0], stroke[0][1], s.brush / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(...stroke[Math.max(0, from - 1)]);
  for (let i = Math.max(1, from); i < stroke.length; i++) ctx.lineTo(...stroke[i]);
  ctx.stroke();
}

function fit(s) {  // as wide as the column allows, at most maxSide; strokes redrawn at the new size
  const available = Math.floor(s.root.getBoundingClientRect().width) || s.maxSide;
  const side = Math.max(120, Math.min(s.maxSide, available));
  if (side === s.side) return;
  s.side = side;
  const pixels = Math.round(side * (window.devicePixelRatio || 1));
  s.canvas.style.width = s.canvas.style.height = `${side}px`;
  s.canvas.width = s.canvas.height = pixels;
  redraw(s);
}

function point(s, event) {
  const box = s.canvas.getBoundingClientRect();
  return [round((event.clientX - box.left) / box.width), round((event.clientY - box.top) / box.height)];
}

function create(root, data) {
  const s = {
    root, canvas: root.querySelector("canvas"), undo: root.querySelector("[data-action=undo]"),
    clear: root.querySelector("[data-action=clear]"), side: 0, pointer: null, send: null,
    strokes: Array.isArray(data.strokes) ? data.strokes : [], maxSide: data.max_side, brush: data.brush,
  };
  const end = (event) => {
    if (event.pointerId !== s.pointer) return;
    s.pointer = null;
    redraw(s);
    s.send(s.strokes);
  };
  s.canvas.addEventListener("pointerdown", (event) => {
    if (s.pointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    s.canvas.setPointerCapture(event.pointerId);
    s.pointer = event.pointerId;
    s.strokes.push([point(s, event)]);
    paint(s, s.strokes[s.strokes.length - 1], 0);
  });
  s.canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== s.pointer) return;
    event.preventDefault();
    const stroke = s.strokes[s.strokes.length - 1];
    const from = stroke.length;
    for (const e of event.getCoalescedEvents ? event.getCoalescedEvents() : [event]) {
      const [x, y] = point(s, e);
      const [px, py] = stroke[stroke.length - 1];
      if (Math.abs(x - px) + Math.abs(y - py) >= 0.002) stroke.push([x, y]);
    }
    if (stroke.length > from) paint(s, stroke, from);
  });
  s.canvas.addEventListener("pointerup", end);
  s.canvas.addEventListener("pointercancel", end);  // what was drawn so far still counts
  s.canvas.addEventListener("lostpointercapture", end);
  s.undo.addEventListener("click", () => { s.strokes.pop(); redraw(s); s.send(s.strokes); });
  s.clear.addEventListener("click", () => { s.strokes = []; redraw(s); s.send(s.strokes); });
  s.observer = new ResizeObserver(() => fit(s));
  s.observer.observe(root);
  return s;
}

export default function (component) {
  const { parentElement, data, setStateValue } = component;
  let s = surfaces.get(parentElement);
  if (!s) {
    s = create(parentElement.querySelector(".draw-root"), data);
    surfaces.set(parentElement, s);
  }
  s.send = (strokes) => setStateValue("strokes", strokes);
  if (s.maxSide !== data.max_side || s.brush !== data.brush) {
    s.maxSide = data.max_side;
    s.brush = data.brush;
    s.side = 0;
  }
  fit(s);
  return () => {
    s.observer.disconnect();
    surfaces.delete(parentElement);
  };
}
