"""Tests of mfbatch_client against a scripted stand-in for `mfbatch serve --stdio` (stdlib only):
answers matched to calls, events routed by key with their cursors, busy retried, long lines."""

import asyncio
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mfbatch_client  # noqa: E402

FAKE = r'''
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    m, i, p = req["method"], req["id"], req.get("params", {})
    out = lambda x: (sys.stdout.write(json.dumps(x) + "\n"), sys.stdout.flush())
    ev = lambda e: out({"jsonrpc": "2.0", "method": "event", "params": e})
    if m == "hello":
        out({"jsonrpc": "2.0", "id": i, "result": {"protocol": 1, "recovered": []}})
    elif m == "launch" and p["key"] == "busy" and not getattr(sys, "tried", False):
        sys.tried = True
        out({"jsonrpc": "2.0", "id": i, "error": {"code": 5, "message": "busy", "data": {"retry_after_ms": 10}}})
    elif m == "launch":
        out({"jsonrpc": "2.0", "id": i, "result": {"key": p["key"], "deduplicated": False}})
        k = p["key"]
        ev({"seq": 1, "key": k, "event": "submitted", "job_id": "j-" + k})
        ev({"seq": 2, "key": k, "job_id": "j-" + k, "event": "log", "message": "x" * 200000, "cursor": "1:1"})
        ev({"seq": 3, "key": k, "job_id": "j-" + k, "event": "exited", "exit_code": 3, "cursor": "1:1"})
    elif m == "shutdown":
        out({"jsonrpc": "2.0", "id": i, "result": {"mode": p["mode"]}})
        break
    else:
        out({"jsonrpc": "2.0", "id": i, "error": {"code": -32601, "message": "unknown method"}})
'''


class ClientTest(unittest.TestCase):
    def test_launch_events_busy_and_long_lines(self):
        async def scenario():
            mf = await mfbatch_client.Client.spawn(command=[sys.executable, "-c", FAKE])
            await mf.launch("busy", script="s.py")
            events = [e async for e in mf.events("busy")]
            self.assertEqual([e["event"] for e in events], ["submitted", "log", "exited"])
            self.assertEqual(len(events[1]["message"]), 200000)
            self.assertEqual(mf.outcome("busy")["exit_code"], 3)
            self.assertEqual(mf.positions["busy"], ("j-busy", "1:1"))
            with self.assertRaises(mfbatch_client.MfbatchError) as raised:
                await mf.call("nope")
            self.assertEqual(raised.exception.code, -32601)
            await mf.close()
            self.assertEqual(mf.process.returncode, 0)

        asyncio.run(scenario())


if __name__ == "__main__":
    unittest.main()
