#!/usr/bin/env python3
"""The GPU measurement scripts of tests/device, checked without a GPU or Nsight Systems:
breakdown.py on made-up nsys stats tables (fixtures/: the current nsys column names with
nsys's own log lines around them, and the older names), on a profile through a stand-in nsys
that knows only the old report names, and against the kernels of kernels/cuda (every one must
fall in a family); breakdown.sh's options and its missing-nsys exit under stand-ins for nsys and
qarac-bench; run.sh's stages, deadline and saved logs under stand-ins for nvidia-smi and the
programs; which Open MPI run.sh gives a bundle's programs, under stand-ins for ldconfig, mpirun
and ldd; train_throughput.py on a made-up metrics.jsonl; goals.py on made-up benchmark outputs.

Usage: test_scripts.py (unittest; exit 0 when every check passes)."""
import glob
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, "fixtures")
BEFORE = os.path.join(FIXTURES, "kern_sum.csv")  # 5 steps, current column names
AFTER = os.path.join(FIXTURES, "kern_sum_after.csv")  # 4 steps, nsys < 2022 column names
sys.path.insert(0, HERE)
import breakdown  # noqa: E402


def run(*args, env=None):
    return subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, check=False)


def fixture_total_ns(path):
    """Σ Total Time (ns) over the fixture's rows, read without breakdown.py's parser: every
    line whose second field is an integer is a row of the fixtures."""
    total = 0
    with open(path) as f:
        for line in f:
            fields = line.split(",")
            if len(fields) > 2 and fields[1].isdigit():
                total += int(fields[1])
    return total


def executable(path, text):
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


class Breakdown(unittest.TestCase):
    def test_families_cover_the_profile(self):
        b = breakdown.breakdown(breakdown.load(BEFORE), 5, 10)
        families = {f["family"]: f for f in b["families"]}
        self.assertAlmostEqual(sum(f["percent"] for n, f in families.items() if n != "total"), 100.0, places=6)
        self.assertAlmostEqual(families["total"]["ms"], fixture_total_ns(BEFORE) / 1e6, places=6)
        self.assertAlmostEqual(families["total"]["ms_per_step"], families["total"]["ms"] / 5, places=9)
        self.assertEqual(b["families"][-1]["family"], "total")
        self.assertEqual(b["families"][-2]["family"], "other")
        ms = [f["ms"] for f in b["families"][:-2]]
        self.assertEqual(ms, sorted(ms, reverse=True))
        # The memory-operation table is read beside the kernel table, nsys's log lines skipped.
        self.assertIn("memset", families)
        self.assertEqual(families["memcpy"]["kernels"], 2)

    def test_kernel_names_fall_in_their_families(self):
        expected = {
            "sm90_xmma_gemm": "GEMM", "nvjet_tst": "GEMM", "cutlass::Kernel2": "GEMM", "splitKreduce": "GEMM",
            "attention_backward_dkdv_tc": "attention", "attention_delta_kernel": "attention",
            "layernorm_param_grad_final": "layernorm", "GeluBackwardOp": "GELU", "bias_grad_final": "bias gradients",
            "cross_entropy_kernel": "loss", "DeviceRadixSortOnesweep": "embedding", "iota_kernel": "embedding",
            "MomentUpdateOp": "optimizer", "sum_of_squares_parts": "reductions", "AddOp": "elementwise",
            "[CUDA memset]": "memset", "[CUDA memcpy Host-to-Device]": "memcpy", "fill_kernel": "other",
        }
        kernels = breakdown.breakdown(breakdown.load(BEFORE), 5, 10)["kernels"]
        for part, family in expected.items():
            matches = [k for k in kernels if part in k["name"]]
            self.assertTrue(matches, part)
            for k in matches:
                self.assertEqual(k["family"], family, k["name"])

    def test_every_kernel_of_the_sources_has_a_family(self):
        """Each __global__ kernel of kernels/cuda and each op the elementwise kernel runs, named
        as nsys prints them: a new kernel must be given a family here, not land in "other"."""
        names = []
        for path in glob.glob(os.path.join(REPO, "kernels", "cuda", "*.cu*")):
            with open(path) as f:
                text = f.read()
            for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\((?:[^()]|\([^()]*\))*\)\s*)?(\w+)", text):
                if m.group(1) != "elementwise_kernel":
                    names.append(f"void qarac::cuda::<unnamed>::{m.group(1)}<float>(const float *, long)")
            for m in re.finditer(r"launch_elementwise<\w+>\([^;]*?(\w+Op)\b", text, re.S):
                names.append(f"void qarac::cuda::elementwise_kernel<(int)4, qarac::cuda::<unnamed>::{m.group(1)}<float>>(long, T2)")
            for m in re.finditer(r"^struct (\w+Op) ", text, re.M):
                names.append(f"void qarac::cuda::elementwise_kernel<(int)4, qarac::cuda::<unnamed>::{m.group(1)}<float>>(long, T2)")
        self.assertGreater(len(names), 30)
        for name in names:
            self.assertNotEqual(breakdown.family_of(name), breakdown.OTHER, name)

    def test_table_lists_the_unmatched_names(self):
        p = run(sys.executable, os.path.join(HERE, "breakdown.py"), BEFORE, "--steps", "5", "--top", "1")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("5 profiled step(s)", p.stdout)
        self.assertIn("unmatched kernels (top 1 of family other)", p.stdout)
        self.assertIn("fill_kernel", p.stdout)  # the more expensive of the two unmatched
        self.assertNotIn("pad_tokens_kernel", p.stdout)
        total = [l for l in p.stdout.splitlines() if l.split()[:1] == ["total"]]
        self.assertEqual(len(total), 1)
        self.assertIn("100.0%", total[0])

    def test_json(self):
        p = run(sys.executable, os.path.join(HERE, "breakdown.py"), BEFORE, "--steps", "5", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        data = json.loads(p.stdout)
        self.assertEqual(data["steps"], 5)
        self.assertEqual([k["name"] for k in data["unmatched"]][0],
                         "void qarac::cuda::<unnamed>::fill_kernel<float>(float *, long, float)")

    def test_idle_share_of_the_step(self):
        busy = fixture_total_ns(BEFORE) / 1e6 / 5
        p = run(sys.executable, os.path.join(HERE, "breakdown.py"), BEFORE, "--steps", "5",
                "--step-ms", str(2 * busy), "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        wall = json.loads(p.stdout)["wall"]
        self.assertAlmostEqual(wall["busy_ms"], busy, places=6)
        self.assertAlmostEqual(wall["idle_ms"], busy, places=6)
        self.assertAlmostEqual(wall["idle_percent"], 50.0, places=6)
        p = run(sys.executable, os.path.join(HERE, "breakdown.py"), BEFORE, "--steps", "5", "--step-ms", str(busy))
        self.assertIn("idle 0.000 ms (0.0%", p.stdout)
        for args in (["--step-ms", "0"], ["--compare", BEFORE, AFTER, "--step-ms", "3"]):
            p = run(sys.executable, os.path.join(HERE, "breakdown.py"), *([BEFORE] if args[0] != "--compare" else []), *args)
            self.assertEqual(p.returncode, 2, args)

    def test_compare(self):
        p = run(sys.executable, os.path.join(HERE, "breakdown.py"), "--compare", BEFORE, AFTER,
                "--steps", "5", "--steps-after", "4", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        data = json.loads(p.stdout)
        after_total = [f for f in data["after"]["families"] if f["family"] == "total"][0]
        self.assertAlmostEqual(after_total["ms"], fixture_total_ns(AFTER) / 1e6, places=6)
        self.assertEqual(data["after"]["steps"], 4)
        diff = {r["family"]: r for r in data["difference"]}
        before = {f["family"]: f for f in data["before"]["families"]}
        after = {f["family"]: f for f in data["after"]["families"]}
        for family, r in diff.items():
            b = before.get(family, {"ms_per_step": 0.0})["ms_per_step"]
            a = after.get(family, {"ms_per_step": 0.0})["ms_per_step"]
            self.assertAlmostEqual(r["delta_ms_per_step"], a - b, places=9)
        self.assertLess(diff["GEMM"]["delta_ms_per_step"], 0)  # the fixture's GEMMs are 20% faster
        self.assertEqual(diff["pooling"]["before_ms_per_step"], 0.0)  # only after
        self.assertEqual(diff["other"]["after_ms_per_step"], 0.0)  # only before
        self.assertEqual(data["difference"][-1]["family"], "total")
        text = run(sys.executable, os.path.join(HERE, "breakdown.py"), "--compare", BEFORE, AFTER,
                   "--steps", "5", "--steps-after", "4").stdout
        self.assertIn("before (", text)
        self.assertIn("after (", text)
        self.assertRegex(text, r"\n  pooling +0\.000 +\S+ +\+\S+ +new ")

    def test_errors_are_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            empty = os.path.join(tmp, "api.csv")
            with open(empty, "w") as f:
                f.write("Time (%),Total Time (ns),Num Calls,Avg (ns),Operation\n1.0,5,1,5,[CUDA memset]\n")
            for args, rc in (([empty], 1), ([os.path.join(tmp, "missing.csv")], 1), ([], 2),
                             ([BEFORE, "--steps", "0"], 2), ([BEFORE, "--compare", BEFORE, AFTER], 2)):
                p = run(sys.executable, os.path.join(HERE, "breakdown.py"), *args)
                self.assertEqual(p.returncode, rc, (args, p.stderr))
                if rc == 1:
                    self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
                    self.assertTrue(p.stderr.startswith("breakdown.py: "), p.stderr)

    def test_profile_through_nsys_with_old_report_names(self):
        with tempfile.TemporaryDirectory() as tmp:
            calls = os.path.join(tmp, "calls")
            executable(os.path.join(tmp, "nsys"), f"""\
                #!{sys.executable}
                import sys
                with open({calls!r}, "a") as f:
                    f.write(" ".join(sys.argv[1:]) + "\\n")
                if "cuda_gpu_kern_sum,cuda_gpu_mem_time_sum" in sys.argv:
                    sys.exit("ERROR: Report 'cuda_gpu_kern_sum' could not be found.")
                print("Processing [profile.sqlite] with [gpukernsum.py]... ")
                sys.stdout.write(open({AFTER!r}).read())
                """)
            rep = os.path.join(tmp, "profile.nsys-rep")
            open(rep, "w").close()
            saved = os.path.join(tmp, "saved.csv")
            env = dict(os.environ, PATH=tmp + os.pathsep + os.environ["PATH"])
            p = run(sys.executable, os.path.join(HERE, "breakdown.py"), rep, "--steps", "4", "--save-csv", saved, env=env)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("4 profiled step(s)", p.stdout)
            with open(calls) as f:
                lines = f.read().splitlines()
            self.assertEqual(len(lines), 2)
            self.assertIn("--report gpukernsum,gpumemtimesum --format csv --output - --force-export=true", lines[1])
            self.assertEqual(breakdown.load(saved), breakdown.load(AFTER))
            # nsys finds no table under either name: one line naming its last message.
            executable(os.path.join(tmp, "nsys"), "#!/bin/sh\necho 'ERROR: not a report file' >&2\nexit 1\n")
            p = run(sys.executable, os.path.join(HERE, "breakdown.py"), rep, env=env)
            self.assertEqual(p.returncode, 1)
            self.assertEqual(p.stderr.strip(), f"breakdown.py: nsys stats {rep}: no kernel table (ERROR: not a report file)")


class BreakdownScript(unittest.TestCase):
    def test_options_reach_qarac_bench_and_nsys(self):
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "log")
            # nsys: records its arguments, runs the program after its options, writes the
            # report; stats prints the fixture.
            executable(os.path.join(tmp, "nsys"), f"""\
                #!{sys.executable}
                import subprocess, sys
                a = sys.argv[1:]
                with open({log!r}, "a") as f:
                    f.write("nsys " + " ".join(a) + "\\n")
                if a[0] == "profile":
                    rc = subprocess.call(a[a.index("env"):])
                    open(a[a.index("--output") + 1] + ".nsys-rep", "w").close()
                    sys.exit(rc)
                sys.stdout.write(open({BEFORE!r}).read())
                """)
            executable(os.path.join(tmp, "qarac-bench"), f"""\
                #!/bin/sh
                echo "bench LD_LIBRARY_PATH=$LD_LIBRARY_PATH $*" >>{log}
                echo "qarac-bench classifier cuda bf16"
                echo "  12.34 ms/step, 1 tokens/s real"
                """)
            out = os.path.join(tmp, "out")
            p = run("bash", os.path.join(HERE, "breakdown.sh"), "--nsys", os.path.join(tmp, "nsys"),
                    "--bench", os.path.join(tmp, "qarac-bench"), "--lib", "/bundle/lib", "--out", out,
                    "--seq", "512", "--batch", "16", "--ragged", "--iters", "4", "--", "--seed", "7")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            with open(log) as f:
                calls = f.read().splitlines()
            self.assertIn("--capture-range=cudaProfilerApi", calls[0])
            self.assertIn("--capture-range-end=stop", calls[0])
            self.assertEqual(calls[1], "bench LD_LIBRARY_PATH=/bundle/lib --workload classifier --device cuda --dtype bf16 "
                             "--preset base --seq 512 --batch 16 --warmup 3 --iters 4 --ragged --seed 7")
            self.assertIn("12.34 ms/step", p.stdout)
            self.assertIn("4 profiled step(s)", p.stdout)
            for name in ("profile.nsys-rep", "kern_sum.csv", "bench.txt", "breakdown.txt", "breakdown.json"):
                self.assertTrue(os.path.isfile(os.path.join(out, name)), name)
            with open(os.path.join(out, "breakdown.json")) as f:
                data = json.load(f)
            self.assertEqual(data["steps"], 4)
            self.assertEqual(data["wall"]["step_ms"], 12.34)  # the bench's ms/step
            self.assertIn("GPU busy", p.stdout)

    def test_without_nsys(self):
        p = run("bash", os.path.join(HERE, "breakdown.sh"), "--nsys", "/nonexistent/nsys", "--bench", "/bin/true")
        self.assertEqual(p.returncode, 77)
        self.assertEqual(len(p.stdout.strip().splitlines()), 1)
        self.assertIn("nsys (Nsight Systems) not found", p.stdout)

    def test_bad_option(self):
        p = run("bash", os.path.join(HERE, "breakdown.sh"), "--sequence", "128")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown option --sequence", p.stderr)


class DeviceRun(unittest.TestCase):
    """run.sh's stages, deadline and saved logs, with stand-ins for nvidia-smi and the programs."""

    def setUp(self):
        self.tmp_dir = tempfile.TemporaryDirectory()
        tmp = self.tmp_dir.name
        self.bin = os.path.join(tmp, "bin")
        self.path = os.path.join(tmp, "path")
        self.out = os.path.join(tmp, "out")
        for d in (self.bin, self.path, self.out):
            os.makedirs(d)
        executable(os.path.join(self.path, "nvidia-smi"), "#!/bin/sh\necho 'Fake GPU, 1.0, 80 GiB'\n")
        executable(os.path.join(self.bin, "test_backend_ops"), "#!/bin/sh\necho '[  PASSED  ] 3 tests.'\n")
        executable(os.path.join(self.bin, "test_cuda_runtime"),
                   "#!/bin/sh\necho 'x.cpp:1: Failure'\necho '[  FAILED  ] 1 test, listed below:'\nexit 1\n")
        executable(os.path.join(self.bin, "test_cuda_training"),
                   "#!/bin/sh\necho 'x.cpp:2: Skipped'\necho '[  PASSED  ] 0 tests.'\necho '[  SKIPPED ] 1 test.'\n")
        executable(os.path.join(self.bin, "qarac-parity"), "#!/bin/sh\necho 'max |diff| 1e-6: within 1e-4'\n")
        executable(os.path.join(self.bin, "qarac-bench"),
                   "#!/bin/sh\necho \"qarac-bench $*\"\necho '  12.34 ms/step, 1 tokens/s real'\n")

    def tearDown(self):
        self.tmp_dir.cleanup()

    def run_sh(self, stages, deadline=600):
        env = dict(os.environ, PATH=self.path + os.pathsep + os.environ["PATH"], TMPDIR=self.tmp_dir.name,
                   OUT=self.out, QARAC_DEVICE_BIN=self.bin, QARAC_DEVICE_STAGES=stages,
                   QARAC_DEVICE_DEADLINE=str(deadline), QARAC_BENCH_ITERS="2")
        return run("bash", os.path.join(HERE, "run.sh"), env=env)

    def saved(self):
        """$OUT/summary.txt, and the names in $OUT/logs.tgz."""
        with open(os.path.join(self.out, "summary.txt")) as f:
            summary = f.read()
        names = run("tar", "tzf", os.path.join(self.out, "logs.tgz")).stdout.split()
        return summary, [os.path.basename(n) for n in names]

    def test_stages_run_and_a_failure_fails_the_run(self):
        p = self.run_sh("tests,parity,bench")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("== test_backend_ops: passed [  PASSED  ] 3 tests.", p.stdout)
        self.assertIn("== test_cuda_runtime: FAILED", p.stdout)
        self.assertIn("x.cpp:1: Failure", p.stdout)
        # A GPU test that skips on the GPU machine did not check anything: not a pass.
        self.assertIn("== test_cuda_training: SKIPPED", p.stdout)
        self.assertIn("x.cpp:2: Skipped", p.stdout)
        self.assertRegex(p.stdout, r"parity cuda bf16 +passed +max \|diff\|")
        self.assertRegex(p.stdout, r"qarac S=512 B=16 ragged +bench +12.34 ms/step")
        self.assertIn("qarac-bench --workload qarac --device cuda --dtype bf16 --preset base --batch 64 --ragged "
                      "--warmup 3 --iters 2", p.stdout)
        summary, logs = self.saved()
        self.assertRegex(summary, r"test_cuda_runtime +FAILED")
        self.assertRegex(summary, r"\(stage bench\) +time")
        self.assertIn("test_cuda_runtime", logs)
        self.assertIn("parity_f32", logs)

    def test_nccl_stage_counts_a_skip_as_no_check(self):
        # mpirun's stand-in runs the program after "-np N" as the one rank.
        executable(os.path.join(self.path, "mpirun"),
                   "#!/bin/sh\nwhile [ \"$1\" != -np ]; do shift; done\nshift 2\nexec \"$@\"\n")
        executable(os.path.join(self.bin, "test_nccl"),
                   "#!/bin/sh\necho 'x.cpp:3: Skipped'\necho '[  PASSED  ] 0 tests.'\necho '[  SKIPPED ] 2 tests.'\n")
        p = self.run_sh("nccl")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("== test_nccl np=1: SKIPPED", p.stdout)
        summary, _ = self.saved()
        self.assertRegex(summary, r"test_nccl np=1 +SKIPPED")
        executable(os.path.join(self.bin, "test_nccl"), "#!/bin/sh\necho '[  PASSED  ] 2 tests.'\n")
        p = self.run_sh("nccl")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("== test_nccl np=1: passed [  PASSED  ] 2 tests.", p.stdout)

    def test_goals_stage_reads_the_bench_stages_outputs(self):
        p = self.run_sh("bench,goals")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("qarac-bench --workload classifier --device cuda --dtype bf16 --preset base --seq 128 --batch 64 "
                      "--dropout --warmup 3 --iters 2", p.stdout)
        self.assertIn("--seq 128 --batch 256 --warmup 3", p.stdout)
        summary, logs = self.saved()
        # The stand-in's figures: equal tokens/s everywhere, no peak share, no PyTorch run.
        self.assertRegex(summary, r"goal: ragged S=128 B=64 real tokens/s over full lengths' +met +1.000 against >= 0.950")
        self.assertRegex(summary, r"goal: S=128 B=64 share of the GEMM peak +no figure +target >= 50%")
        self.assertRegex(summary, r"goal: QARAC step B=64 against PyTorch +no figure")
        self.assertIn("bench_S128_B64_dropout", logs)

    def test_kernels_stage_reports_each_pair(self):
        executable(os.path.join(self.bin, "bench_kernels"),
                   "#!/bin/sh\necho 'attention backward S=128 B=64               one-block  0.0300 ms (300.0 TFLOP/s)  "
                   "tiled  0.1000 ms ( 90.0 TFLOP/s)  tiled/one-block 3.33  gap dq 1.0e-03 dk 1.0e-03 dv 1.0e-03'\n"
                   "echo 'layernorm backward T=8192 d=768               one-kernel  0.0200 ms ( 1888 GB/s)  "
                   "rows-then-columns  0.0300 ms ( 1258 GB/s)  ratio 1.50  gap dx 0.0e+00 dgamma 1.0e-07, "
                   "same bits: dbeta yes dbias -'\n"
                   "echo \"layer GEMMs AE, reasoning's premises       one-pass  0.5000 ms (400.0 TFLOP/s over 4096 "
                   "tokens)  separate  0.6000 ms (333.3 TFLOP/s over 2048+2048)  separate/one-pass 1.20\"\n"
                   "echo 'layer backward GEMMs T=2048                one-stream  0.2000 ms (300.0 TFLOP/s)  "
                   "dW-beside  0.1800 ms (333.3 TFLOP/s)  one-stream/dW-beside 1.11'\n")
        p = self.run_sh("kernels")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        summary, _ = self.saved()
        self.assertRegex(summary, r"attention backward S=128 B=64 +passed +one-block +0.0300 ms .*tiled/one-block 3.33")
        self.assertRegex(summary, r"layernorm backward T=8192 d=768 +passed +one-kernel +0.0200 ms .*dbeta yes")
        self.assertRegex(summary, r"layer GEMMs AE, reasoning's premises +passed +one-pass +0.5000 ms .*separate/one-pass 1.20")
        self.assertRegex(summary, r"layer backward GEMMs T=2048 +passed +one-stream +0.2000 ms .*one-stream/dW-beside 1.11")

    def test_breakdown_stage_reports_each_step_and_its_idle_share(self):
        executable(os.path.join(self.path, "nsys"), f"""\
            #!{sys.executable}
            import subprocess, sys
            a = sys.argv[1:]
            if a[0] == "profile":
                rc = subprocess.call(a[a.index("env"):])
                open(a[a.index("--output") + 1] + ".nsys-rep", "w").close()
                sys.exit(rc)
            sys.stdout.write(open({BEFORE!r}).read())
            """)
        p = self.run_sh("breakdown")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("== full lengths (BEFORE) against ragged (AFTER), per family", p.stdout)
        self.assertNotIn("against qarac", p.stdout)
        self.assertIn("--workload qarac --device cuda --dtype bf16 --preset base --seq 128 --batch 64 --warmup 3 "
                      "--iters 3", p.stdout)
        summary, _ = self.saved()
        for label in ("S=128 B=64", "S=128 B=64 ragged", "S=128 B=64 dropout", "QARAC step B=64"):
            self.assertRegex(summary, rf"breakdown {label} +passed +total .* GPU busy [0-9.]+ of the step's 12.340 ms")

    def test_kernels_stage_fails_with_the_program(self):
        executable(os.path.join(self.bin, "bench_kernels"), "#!/bin/sh\necho 'bench_kernels: out of memory'\nexit 1\n")
        p = self.run_sh("kernels")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        summary, _ = self.saved()
        self.assertRegex(summary, r"bench_kernels +FAILED +bench_kernels: out of memory")

    def test_stages_past_the_deadline_are_skipped(self):
        p = self.run_sh("tests,parity", deadline=0)
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertNotIn("test_backend_ops", p.stdout)
        summary, _ = self.saved()
        self.assertRegex(summary, r"stage tests +skipped +deadline 0 s")
        self.assertRegex(summary, r"stage parity +skipped +deadline 0 s")

    def test_a_running_stage_is_stopped_at_the_deadline(self):
        # A stage starts with 20 s left; what the deadline stops is cut (exit 2), not failed.
        executable(os.path.join(self.bin, "qarac-parity"), "#!/bin/sh\nsleep 60\n")
        p = self.run_sh("parity", deadline=21)
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("== qarac-parity cuda f32: cut", p.stdout)
        self.assertIn("== qarac-parity cuda bf16: cut", p.stdout)
        summary, _ = self.saved()
        seconds = int(re.search(r"\(stage parity\) +time +(\d+) s", summary).group(1))
        self.assertLess(seconds, 30)

    def test_no_bundle_builds_nothing_unless_asked(self):
        # A build on the GPU machine takes most of a session's minutes: only QARAC_DEVICE_BUILD=1.
        env = dict(os.environ, PATH=self.path + os.pathsep + os.environ["PATH"], TMPDIR=self.tmp_dir.name,
                   OUT=self.out)
        env.pop("QARAC_DEVICE_BIN", None)
        env.pop("QARAC_DEVICE_BUILD", None)
        p = run("bash", os.path.join(HERE, "run.sh"), os.path.join(self.tmp_dir.name, "nothing"), env=env)
        self.assertEqual(p.returncode, 1)
        self.assertIn("bundle.tgz", p.stderr)
        self.assertIn("QARAC_DEVICE_BUILD=1", p.stderr)
        self.assertNotIn("cmake", p.stdout)

    def test_unknown_stage(self):
        p = self.run_sh("tests,benchmarks")
        self.assertEqual(p.returncode, 1)
        self.assertIn("unknown stage 'benchmarks'", p.stderr)
        self.assertNotIn("test_backend_ops", p.stdout)


class DeviceBundle(unittest.TestCase):
    """run.sh on a bundle: Open MPI's runtime libraries come from the machine (those of its
    mpirun), every other bundled library stays, and the bundle's MPI returns when the machine's
    leaves a symbol unresolved (stand-ins for ldconfig, mpirun and ldd)."""

    def setUp(self):
        self.tmp_dir = tempfile.TemporaryDirectory()
        tmp = self.tmp_dir.name
        self.path = os.path.join(tmp, "path")
        stage = os.path.join(tmp, "stage", "bundle")
        for d in (self.path, os.path.join(stage, "bin"), os.path.join(stage, "lib"), os.path.join(stage, "golden")):
            os.makedirs(d)
        # The parity stand-in names, in the summary, the libraries of its LD_LIBRARY_PATH's first
        # folder: the bundle's.
        executable(os.path.join(stage, "bin", "qarac-parity"),
                   "#!/bin/sh\necho \"max |diff| $(ls ${LD_LIBRARY_PATH%%:*} | tr '\\n' ' ')\"\n")
        for name in ("libmpi.so.40", "libopen-pal.so.40", "libhwloc.so.15", "libhdf5_serial.so.103", "libqarac_core.so"):
            open(os.path.join(stage, "lib", name), "w").close()
        os.makedirs(os.path.join(tmp, "bundle"))
        run("tar", "czf", os.path.join(tmp, "bundle", "bundle.tgz"), "-C", os.path.dirname(stage), "bundle")
        executable(os.path.join(self.path, "nvidia-smi"), "#!/bin/sh\necho 'Fake GPU'\n")
        executable(os.path.join(self.path, "ldconfig"),
                   "#!/bin/sh\necho '2 libs found in cache'\n"
                   "echo '\tlibmpi.so.40 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libmpi.so.40'\n"
                   "echo '\tlibhdf5_serial.so.103 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libhdf5_serial.so.103'\n")
        executable(os.path.join(self.path, "mpirun"), "#!/bin/sh\nexit 0\n")

    def tearDown(self):
        self.tmp_dir.cleanup()

    def run_sh(self, ldd):
        executable(os.path.join(self.path, "ldd"), ldd)
        env = dict(os.environ, PATH=self.path + os.pathsep + os.environ["PATH"], TMPDIR=self.tmp_dir.name,
                   OUT=self.tmp_dir.name, QARAC_DEVICE_STAGES="parity", QARAC_DEVICE_DEADLINE="60")
        env.pop("QARAC_DEVICE_BIN", None)
        return run("bash", os.path.join(HERE, "run.sh"), os.path.join(self.tmp_dir.name, "bundle"), env=env)

    def test_open_mpi_from_the_machine(self):
        p = self.run_sh("#!/bin/sh\necho 'libc.so.6 => /lib/libc.so.6'\n")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("== Open MPI: the machine's (%s/mpirun), not the bundle's" % self.path, p.stdout)
        self.assertRegex(p.stdout, r"parity cuda f32 +passed +max \|diff\| libhdf5_serial.so.103 libqarac_core.so *\n")

    def test_the_bundles_open_mpi_where_the_machines_leaves_a_symbol_undefined(self):
        # ldd -r: the libraries are found, but a symbol of the programs is not in the machine's.
        p = self.run_sh("#!/bin/sh\nfor d in $(echo $LD_LIBRARY_PATH | tr : ' '); do [ -e $d/libmpi.so.40 ] && exit 0; done\n"
                        "echo 'undefined symbol: ompi_mpi_comm_world\t(/bin/qarac-train)'\n")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("== Open MPI: the machine's leaves symbols unresolved; the bundle's (Debian's) is used", p.stdout)

    def test_the_bundles_open_mpi_where_the_machines_leaves_symbols_unresolved(self):
        # Unresolved once the bundle's libmpi is gone.
        p = self.run_sh("#!/bin/sh\nfor d in $(echo $LD_LIBRARY_PATH | tr : ' '); do [ -e $d/libmpi.so.40 ] && exit 0; done\n"
                        "echo 'libmpi.so.40 => not found'\n")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("== Open MPI: the machine's leaves symbols unresolved; the bundle's (Debian's) is used", p.stdout)
        self.assertRegex(p.stdout, r"parity cuda f32 +passed +max \|diff\| libhdf5_serial.so.103 libhwloc.so.15 "
                                   r"libmpi.so.40 libopen-pal.so.40 libqarac_core.so")


class TrainThroughput(unittest.TestCase):
    def metrics(self, tmp):
        """Ten steps of 1000 tokens and 40 examples; each step 0.1 s of which 0.08 s compute and
        0.01 s data; a 0.5 s checkpoint after step 6; an evaluation line after step 5."""
        path = os.path.join(tmp, "metrics.jsonl")
        elapsed = 0.0
        with open(path, "w") as f:
            for step in range(1, 11):
                elapsed += 0.1 + (0.5 if step == 7 else 0.0)
                f.write(json.dumps({"step": step, "global_tokens": 1000, "global_examples": 40, "elapsed_s": elapsed,
                                    "step_time_s": 0.1, "compute_time_s": 0.08, "data_time_s": 0.01,
                                    "comm_wait_s": 0.0, "global_tokens_per_s": 10000.0}) + "\n")
                if step == 5:
                    f.write(json.dumps({"step": 5, "eval": True, "global_tokens": 0}) + "\n")
        return path

    def test_figures(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = run(sys.executable, os.path.join(HERE, "train_throughput.py"), self.metrics(tmp), "--skip", "4", "--json")
            self.assertEqual(p.returncode, 0, p.stderr)
            t = json.loads(p.stdout)
            self.assertEqual((t["first_step"], t["last_step"], t["steps"]), (6, 10, 5))
            self.assertAlmostEqual(t["end_to_end_tokens_per_s"], 5000 / 1.0)  # 5 steps of 0.1 s + 0.5 s
            self.assertAlmostEqual(t["step_tokens_per_s"], 10000.0)
            self.assertAlmostEqual(t["compute_tokens_per_s"], 12500.0)
            self.assertAlmostEqual(t["data_ms"], 10.0)
            self.assertAlmostEqual(t["outside_ms"], 500.0)
            self.assertAlmostEqual(t["largest_gap_ms"], 500.0)
            self.assertEqual(t["largest_gap_after_step"], 6)
            text = run(sys.executable, os.path.join(HERE, "train_throughput.py"), self.metrics(tmp), "--skip", "4").stdout
            self.assertTrue(text.startswith("steps 6-10: 5000 tokens/s, 200.0 examples/s end to end"), text)

    def test_too_few_steps(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = run(sys.executable, os.path.join(HERE, "train_throughput.py"), self.metrics(tmp), "--skip", "9")
            self.assertEqual(p.returncode, 1)
            self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
            self.assertIn("10 step lines, need at least --skip + 2 = 11", p.stderr)


class Goals(unittest.TestCase):
    """goals.py on made-up qarac-bench and PyTorch outputs, as run.sh's bench and torch stages keep them."""

    def bench(self, ms, real, share=None):
        line = f"qarac-bench classifier cuda bf16: d=768\n  {ms:.2f} ms/step, {real:.0f} tokens/s real, 1 tokens/s padded"
        return line + (f", 300.00 TFLOP/s, {share:.1f}% of the measured bf16 GEMM peak 800 TFLOP/s\n" if share else "\n")

    def goals(self, files):
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            p = run(sys.executable, os.path.join(HERE, "goals.py"), tmp)
        self.assertEqual(p.returncode, 0, p.stderr)
        return [line.split("|") for line in p.stdout.splitlines()]

    def test_each_goal_against_its_figures(self):
        rows = self.goals({
            "bench_S128_B64": self.bench(15.6, 524000, 34.4),
            "bench_S128_B64_ragged": self.bench(12.0, 500000, 20.0),  # 0.954 of full: within 5%
            "bench_S128_B64_dropout": self.bench(18.0, 454000, 30.0),  # 0.866 of full: not within 10%
            "bench_S128_B256": self.bench(50.0, 655000, 61.0),
            "bench_qarac_B64": self.bench(30.0, 100000),
            "torch_qarac_B64": "torch qarac cuda bf16-autocast: d=768\n  320.70 ms/step, 1 tokens/s real\n",
        })
        self.assertEqual([r[:2] for r in rows], [
            ["S=128 B=64 share of the GEMM peak", "not met"],
            ["S=128 B=256 share of the GEMM peak", "met"],
            ["ragged S=128 B=64 real tokens/s over full lengths'", "met"],
            ["dropout 0.1 S=128 B=64 tokens/s over without", "not met"],
            ["QARAC step B=64 against PyTorch", "met"],
        ])
        self.assertEqual(rows[0][2], "34.4% against >= 50%")
        self.assertEqual(rows[2][2], "0.954 against >= 0.950")
        self.assertEqual(rows[4][2], "10.69x (320.70 / 30.00 ms) against >= 10x")

    def test_a_missing_or_failed_run_is_no_figure(self):
        rows = self.goals({"bench_S128_B64": "qarac-bench: error: out of memory\n",
                           "bench_S128_B256": self.bench(50.0, 655000)})  # no peak share: not CUDA
        self.assertEqual({r[1] for r in rows}, {"no figure"})
        self.assertEqual(rows[0][2], "target >= 50%")

    def test_usage(self):
        p = run(sys.executable, os.path.join(HERE, "goals.py"), "/nonexistent")
        self.assertEqual(p.returncode, 1)
        self.assertIn("usage: goals.py LOGDIR", p.stderr)


if __name__ == "__main__":
    unittest.main()
