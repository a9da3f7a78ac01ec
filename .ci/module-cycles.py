#!/usr/bin/env python3
"""Finds import cycles between the files of a crate.

    .ci/module-cycles.py CRATE_SRC_DIR...

Each `.rs` file under a crate's `src/` is a module. A file depends on another when it names an
item of it through `crate::`, `super::` or `self::` paths (in `use` lists, nested groups
included, and inline paths). A re-export (`pub use`) in a `lib.rs` or `mod.rs` is not a
dependency of that file: a path through it resolves to the file the item comes from. A
parent's `mod child;` is not a dependency either. Prints every cycle (a strongly connected
component of more than one file) and exits 1 if there is one.
"""

import os
import re
import sys


def module_files(src):
    """Maps module paths (tuples) to files."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("lib", "main", "mod"):
                rel = rel[:-1]
            mods[tuple(rel)] = path
    return mods


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        i = s.find("{")
        if i < 0:
            for part in split_top(s):
                out.append(prefix + part)
            return
        head = s[:i]
        body = s[i + 1 : s.rfind("}")]
        for part in split_top(body):
            walk(prefix + head, part)

    walk("", tree)
    return [p.split(" as ")[0] for p in out]


def split_top(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    # a group element may itself hold a group
    return [p for p in parts if p]


USE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")
INLINE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def absolute(mod, path):
    segs = path.split("::")
    if segs[0] == "crate":
        return list(segs[1:])
    base = list(mod)
    while segs and segs[0] in ("super", "self"):
        if segs[0] == "super":
            base = base[:-1]
        segs = segs[1:]
    if path.startswith(("super", "self")):
        return base + segs
    return None


def main():
    found = False
    for src in sys.argv[1:]:
        mods = module_files(src)
        reexports = {}  # (module, name) -> absolute path it stands for
        uses = {}
        for mod, path in mods.items():
            text = strip_comments(open(path).read())
            deps = []
            for m in USE.finditer(text):
                is_pub = m.group(1) is not None
                for p in expand_use(m.group(2)):
                    if not p.startswith(("crate", "super", "self")):
                        continue
                    target = absolute(mod, p)
                    if target is None:
                        continue
                    if is_pub and os.path.basename(path) in ("lib.rs", "mod.rs"):
                        reexports[(mod, target[-1])] = target
                    else:
                        deps.append(target)
            for m in INLINE.finditer(text):
                target = absolute(mod, m.group(1) + m.group(2))
                if target is not None:
                    deps.append(target)
            uses[mod] = deps

        def resolve(target, depth=0):
            """The file a path lands in: the deepest module file, through re-exports."""
            cur = ()
            for i, seg in enumerate(target):
                nxt = cur + (seg,)
                if nxt in mods:
                    cur = nxt
                    continue
                alias = reexports.get((cur, seg))
                if alias is not None and depth < 8:
                    return resolve(alias + target[i + 1 :], depth + 1)
                break
            return cur

        graph = {m: set() for m in mods}
        for mod, deps in uses.items():
            for t in deps:
                r = resolve(t)
                if r != mod and r in mods and r != ():
                    # a child naming its own parent's items is a dependency; a parent
                    # naming a child is one too (both count)
                    graph[mod].add(r)

        # Tarjan's strongly connected components
        index, low, stack, on, sccs = {}, {}, [], set(), []
        counter = [0]

        def strong(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph[v]:
                if w not in index:
                    strong(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    sccs.append(comp)

        sys.setrecursionlimit(10000)
        for v in sorted(graph):
            if v not in index:
                strong(v)
        for comp in sccs:
            found = True
            names = sorted(os.path.relpath(mods[m]) for m in comp)
            print(f"import cycle in {src}: " + " ⇄ ".join(names))
            for m in sorted(comp):
                for w in sorted(graph[m] & set(comp)):
                    print(f"    {os.path.relpath(mods[m])} → {os.path.relpath(mods[w])}")
    if not found:
        print("no import cycles between files in: " + " ".join(sys.argv[1:]))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
