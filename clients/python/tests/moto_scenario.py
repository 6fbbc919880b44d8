"""End to end through mfbatch_client: three jobs on moto's Batch, the daemon SIGKILLed and
restarted between two of them. Run by tests/serve_moto.rs (which starts moto and sets the
environment), not by unittest discovery:

    python moto_scenario.py MFBATCH STATE_DIR STEP_DIR

Job a prints and exits 0 under the first daemon. Job b prints three lines, then waits for a
file the scenario creates only once the first daemon is dead, prints four more and exits 3:
those lines reach CloudWatch while no daemon runs. The second daemon reports both jobs in
`hello`, resumes b from the client's last cursor, replays a's key (no new job) and runs c.
Asserts every line of each job exactly once, in order, and the exit codes; prints a JSON
summary (key -> job id, exit code) for the Rust side to check against moto.
"""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mfbatch_client  # noqa: E402

WAIT_S = 120
EXPECTED = {
    "a": [f"a line {i}" for i in range(4)],
    "b": [f"b line {i}" for i in range(7)],
    "c": [f"c line {i} ünï" for i in range(5)],
}
EXIT = {"a": 0, "b": 3, "c": 0}
KEYS = {name: f"e2e/serve/{name}/a0" for name in EXPECTED}

STEPS = {
    "a.py": "for i in range(4):\n    print('a line', i, flush=True)\n",
    "b.py": (
        "import os, sys, time\n"
        "for i in range(3):\n    print('b line', i, flush=True)\n"
        "deadline = time.time() + 120\n"
        "while not os.path.exists(sys.argv[1]) and time.time() < deadline:\n"
        "    time.sleep(0.1)\n"
        "for i in range(3, 7):\n    print('b line', i, flush=True)\n"
        "sys.exit(3)\n"
    ),
    "c.py": "for i in range(5):\n    print('c line', i, 'ünï', flush=True)\n",
}


class Scenario:
    def __init__(self, mfbatch, state_dir, step_dir):
        self.mfbatch, self.state_dir, self.step_dir = mfbatch, state_dir, step_dir
        self.lines = {name: [] for name in EXPECTED}
        self.exited = {}
        self.job_ids = {}
        self.cursors = {}
        self.go = os.path.join(step_dir, "b-may-go-on")

    async def start(self):
        return await mfbatch_client.Client.spawn(
            "mfbatch", "--state-dir", self.state_dir, command=[self.mfbatch], cwd=self.step_dir)

    def launch_params(self, name):
        params = {"script": os.path.join(self.step_dir, f"{name}.py")}
        if name == "b":
            params["args"] = [self.go]
        return params

    async def collect(self, mf, name, until=None):
        """Records the job's lines (and cursor) until its end, or until `until` holds."""
        key = KEYS[name]
        async for event in mf.events(key):
            if event.get("job_id"):
                self.job_ids.setdefault(name, event["job_id"])
                assert self.job_ids[name] == event["job_id"], event
            if event["event"] == "log":
                self.lines[name].append(event["message"])
                self.cursors[name] = event["cursor"]
            elif event["event"] == "exited":
                self.exited[name] = event
            elif event["event"] in ("launch_failed", "follow_failed"):
                raise AssertionError(f"{name}: {event}")
            if until and until():
                return

    async def first_daemon(self):
        mf = await self.start()
        assert mf.hello["recovered"] == [], mf.hello
        for name in ("a", "b"):
            answer = await mf.launch(KEYS[name], **self.launch_params(name))
            assert answer["deduplicated"] is False, answer
        await asyncio.wait_for(self.collect(mf, "a"), WAIT_S)
        await asyncio.wait_for(
            self.collect(mf, "b", until=lambda: len(self.lines["b"]) == 3), WAIT_S)
        # SIGKILL: nothing flushed, nothing detached; the journal is all that is left.
        mf.process.kill()
        await mf.process.wait()
        assert "b" not in self.exited

    async def second_daemon(self):
        with open(self.go, "w"):
            pass  # b prints its last lines while no daemon runs
        mf = await self.start()
        recovered = {r["key"]: r for r in mf.hello["recovered"]}
        for name in ("a", "b"):
            assert recovered[KEYS[name]]["job_id"] == self.job_ids[name], mf.hello
        answer = await mf.follow(KEYS["b"], self.job_ids["b"], self.cursors["b"])
        assert answer["key"] == KEYS["b"], answer
        replay = await mf.launch(KEYS["a"], follow=False, **self.launch_params("a"))
        assert replay["deduplicated"] is True and replay["job_id"] == self.job_ids["a"], replay
        answer = await mf.launch(KEYS["c"], **self.launch_params("c"))
        assert answer["deduplicated"] is False, answer
        await asyncio.wait_for(
            asyncio.gather(self.collect(mf, "b"), self.collect(mf, "c")), WAIT_S)
        await mf.close()
        assert mf.process.returncode == 0, mf.process.returncode

    def check(self):
        for name, expected in EXPECTED.items():
            assert self.lines[name] == expected, (name, self.lines[name])
            exited = self.exited[name]
            assert exited["exit_code"] == EXIT[name], (name, exited)
            # The count covers the lines the first daemon delivered before the cursor.
            assert exited["log_lines"] == {"1": len(expected)}, (name, exited)
        assert len(set(self.job_ids.values())) == 3, self.job_ids

    async def run(self):
        for name, text in STEPS.items():
            with open(os.path.join(self.step_dir, name), "w", encoding="utf-8") as f:
                f.write(text)
        await self.first_daemon()
        await self.second_daemon()
        self.check()
        summary = {
            name: {"job_id": self.job_ids[name], "exit_code": self.exited[name]["exit_code"]}
            for name in EXPECTED
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(Scenario(*sys.argv[1:4]).run())
