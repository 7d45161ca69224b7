// The `encoding` option (torch.load's, for Python 2 strings) in the JS API: Python's names,
// ASCII-only strings loading under "ascii", a non-ASCII byte failing with torch's own
// UnicodeDecodeError text (expected_formats.json `encoding_errors`), "latin1" loading it, and
// any other name a TypeError that lists the accepted ones.

import assert from "node:assert/strict";
import { test } from "node:test";

import { compare, fixture, fixtureJson, ptload } from "./helpers.mjs";

const expected = fixtureJson("expected_formats.json");

test("ASCII-only strings load under ascii, with torch's digests", async () => {
  for (const encoding of ["ascii", "ASCII", "utf-8", "utf8", "latin1"]) {
    const ckpt = await ptload.load(fixture("py2/ascii.pt"), { encoding });
    const problems = await compare(ckpt, expected.files["py2/ascii.pt"], encoding);
    assert.deepEqual(problems, []);
    assert.equal(ckpt.root.meta.name, "py2 checkpoint");
  }
});

test("a non-ASCII byte fails under ascii as torch says", async () => {
  let checked = 0;
  for (const [rel, byEncoding] of Object.entries(expected.encoding_errors)) {
    for (const [encoding, torchSays] of Object.entries(byEncoding)) {
      await assert.rejects(ptload.load(fixture(rel), { encoding }), (e) => {
        assert.ok(e.message.includes(torchSays), `${rel} ${encoding}: ${e.message}`);
        return true;
      });
      checked++;
    }
  }
  assert.ok(checked >= 4, `${checked}`);
});

test("latin1 (and its other names) loads the non-ASCII file", async () => {
  for (const encoding of ["latin1", "latin-1", "iso-8859-1"]) {
    const ckpt = await ptload.load(fixture("py2/latin1.pt"), { encoding });
    const problems = await compare(ckpt, expected.files["py2/latin1.pt"], encoding);
    assert.deepEqual(problems, []);
    assert.ok("café" in ckpt.root);
  }
});

test("an unknown encoding is a TypeError listing the accepted names", async () => {
  await assert.rejects(ptload.load(fixture("py2/ascii.pt"), { encoding: "cp1252" }), (e) => {
    assert.ok(e instanceof TypeError, String(e));
    assert.match(e.message, /unknown encoding: cp1252 \(ptload decodes Python 2 strings as ascii, utf-8 \(utf8\), latin1 \(latin-1, iso-8859-1\) or bytes\)/);
    return true;
  });
});
