import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A real single-node Slurm (Debian's `slurm-wlm` and `munge`, installed by `make test-deps`) for
/// the tests: its own munged (a key made for the run, its own socket), slurmctld and slurmd on
/// free ports, every file in a temporary folder, this host as the one node with all its CPUs.
/// `sbatch`, `squeue` and `scontrol` reach it through `environment` (SLURM_CONF). Stopped by
/// `stop()`, and when the test process ends however it ends (a watcher waits on a pipe only
/// this process writes, as `PostgresTestCluster`'s does): jobs cancelled, daemons, job steps and
/// their programs killed, folder removed.
///
/// Without cgroups (containers rarely delegate them) a single node works with
/// `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none`; `NoInAddrAny` keeps the
/// daemons on loopback.
public final class SlurmTestCluster: Sendable {
    /// The folder of the configuration, state, spool, logs and munge socket.
    public let directory: String
    /// The `slurm.conf` the daemons and commands read.
    public let configuration: String
    /// The node's name (this host's short name).
    public let node: String
    private let pids: [pid_t]

    /// The programs the cluster needs.
    static let programs = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo"]

    /// Whether Slurm and munge are installed here (else a test using them is skipped, saying so).
    public static var isInstalled: Bool { programs.allSatisfy { locate($0) != nil } }

    /// Why the tests needing Slurm are skipped when it is not installed.
    public static let notInstalled =
        "Slurm and munge are not installed (slurm-wlm, munge): `make test-deps` installs them"

    /// The environment the Slurm commands (and `deploy/slurm/submit.sh`) need.
    public var environment: [String: String] { ["SLURM_CONF": configuration] }

    private init(directory: String, configuration: String, node: String, pids: [pid_t]) {
        self.directory = directory
        self.configuration = configuration
        self.node = node
        self.pids = pids
    }

    /// Daemons live in /usr/sbin, which a test's PATH may lack.
    static func locate(_ program: String) -> String? {
        findExecutable(program)
            ?? ["/usr/sbin/", "/usr/bin/"].map { $0 + program }.first {
                FileManager.default.isExecutableFile(atPath: $0)
            }
    }

    static func program(_ name: String) throws -> String {
        guard let path = locate(name) else { throw HarnessError("\(name): \(notInstalled)") }
        return path
    }

    /// Starts munged, slurmctld and slurmd, and waits (polling, 120 s at most) until the node is idle.
    public static func start() async throws -> SlurmTestCluster {
        // Short: the munge socket's path must stay under 108 bytes.
        let base = "/tmp/dallage-slurm-" + String(UUID().uuidString.prefix(8)).lowercased()
        let keyDirectory = base + "/key"
        for (path, mode) in [(base, 0o755), (base + "/munge", 0o755), (keyDirectory, 0o700)] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            // munged checks every folder on the way to its socket and key: no write for others.
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        }
        for folder in ["state", "spool"] {
            try FileManager.default.createDirectory(atPath: base + "/" + folder, withIntermediateDirectories: true)
        }
        let key = keyDirectory + "/munge.key"
        let socket = base + "/munge/munge.socket"
        try await ChildProcess.run(
            try program("mungekey"), ["--create", "--keyfile=" + key], log: base + "/mungekey.log")
        var pids: [pid_t] = []
        // Whatever happens from here, the daemons started go with the test process.
        try watch(base: base)
        do {
            func daemon(_ name: String, _ arguments: [String]) throws {
                pids.append(try ChildProcess.spawn(try program(name), arguments, log: base + "/\(name).out"))
            }
            try daemon(
                "munged",
                [
                    "--foreground", "--key-file=" + key, "--socket=" + socket,
                    "--pid-file=" + keyDirectory + "/munged.pid", "--log-file=" + base + "/munged.log",
                    "--seed-file=" + keyDirectory + "/munged.seed",
                ])
            try await eventually("munged to open its socket \(socket)", timeout: .seconds(60)) {
                FileManager.default.fileExists(atPath: socket)
            }

            let node = String(ProcessInfo.processInfo.hostName.split(separator: ".").first ?? "localhost")
            let ports = try freePorts(2)
            let cpus = ProcessInfo.processInfo.activeProcessorCount
            let conf = """
                ClusterName=dallage-test
                SlurmctldHost=\(node)(127.0.0.1)
                SlurmUser=root
                SlurmdUser=root
                SlurmctldPort=\(ports[0])
                SlurmdPort=\(ports[1])
                AuthType=auth/munge
                CredType=cred/munge
                AuthInfo=socket=\(socket)
                StateSaveLocation=\(base)/state
                SlurmdSpoolDir=\(base)/spool
                SlurmctldPidFile=\(base)/slurmctld.pid
                SlurmdPidFile=\(base)/slurmd.pid
                SlurmctldLogFile=\(base)/slurmctld.log
                SlurmdLogFile=\(base)/slurmd.log
                ProctrackType=proctrack/linuxproc
                TaskPlugin=task/none
                CommunicationParameters=NoInAddrAny
                SelectType=select/cons_tres
                SelectTypeParameters=CR_CPU
                SchedulerType=sched/backfill
                JobAcctGatherType=jobacct_gather/none
                AccountingStorageType=accounting_storage/none
                JobCompType=jobcomp/none
                MpiDefault=none
                ReturnToService=2
                NodeName=\(node) NodeAddr=127.0.0.1 CPUs=\(cpus) State=UNKNOWN
                PartitionName=main Nodes=\(node) Default=YES MaxTime=INFINITE State=UP

                """
            let configuration = base + "/slurm.conf"
            try conf.write(toFile: configuration, atomically: true, encoding: .utf8)
            try daemon("slurmctld", ["-D", "-f", configuration])
            try daemon("slurmd", ["-D", "-f", configuration, "-N", node])
            let cluster = SlurmTestCluster(directory: base, configuration: configuration, node: node, pids: pids)
            do {
                try await eventually(
                    "the Slurm node \(node) to be idle", timeout: .seconds(120), every: .milliseconds(250)
                ) {
                    let state = try? await run(
                        try program("sinfo"), ["-h", "-N", "-o", "%T"], environment: cluster.environment)
                    return state?.trimmingCharacters(in: .whitespacesAndNewlines) == "idle"
                }
            } catch {
                throw HarnessError("Slurm did not start: \(error)\n\(cluster.logTail())")
            }
            return cluster
        } catch {
            SlurmTestCluster(directory: base, configuration: base + "/slurm.conf", node: "", pids: pids).stop()
            throw error
        }
    }

    /// The last lines of the daemons' logs, for a failure message.
    public func logTail(lines: Int = 15) -> String {
        ["slurmctld.log", "slurmd.log", "munged.log"].map { name in
            let text = (try? String(contentsOfFile: directory + "/" + name, encoding: .utf8)) ?? "(none)"
            return "== \(name)\n" + text.split(separator: "\n").suffix(lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// Submits a batch script (`sbatch --parsable`) and returns the job id.
    public func submit(_ arguments: [String], environment: [String: String] = [:]) async throws -> String {
        let out = try await run(
            try Self.program("sbatch"), ["--parsable"] + arguments,
            environment: self.environment.merging(environment) { $1 })
        return String(out.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ";").first ?? "")
    }

    /// The state of every task of job `id` (one for a plain job, one per array task).
    public func states(of id: String) async throws -> [String] {
        let out = try await run(try Self.program("scontrol"), ["-o", "show", "job", id], environment: environment)
        return out.split(separator: "\n").compactMap { line in
            line.split(separator: " ").first { $0.hasPrefix("JobState=") }.map { String($0.dropFirst(9)) }
        }
    }

    /// Waits until every task of each job has ended (polling, `timeout` at most), and throws,
    /// with the daemons' logs, unless all completed.
    public func waitForCompletion(of ids: [String], timeout: Duration = .seconds(900)) async throws {
        let last = try await waitUntilEnded(ids, timeout: timeout)
        let failed = last.filter { !$0.value.allSatisfy { $0 == "COMPLETED" } }
        if !failed.isEmpty {
            throw HarnessError("Slurm jobs did not complete: \(failed)\n\(logTail())")
        }
    }

    /// Waits until every task of each job has ended, however (polling, `timeout` at most), and
    /// returns their states by job id.
    public func waitUntilEnded(_ ids: [String], timeout: Duration = .seconds(900)) async throws -> [String: [String]] {
        let ended: Set = [
            "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE",
        ]
        var last: [String: [String]] = [:]
        try await eventually(
            "Slurm jobs \(ids.joined(separator: ", ")) to end", timeout: timeout, every: .milliseconds(500)
        ) {
            for id in ids { last[id] = try await states(of: id) }
            return last.values.allSatisfy { !$0.isEmpty && $0.allSatisfy(ended.contains) }
        }
        return last
    }

    /// Sends `signal` (`KILL`, `STOP`…) to the running task `task` of a job (`<job>_<index>` for an
    /// array task) with `scancel --signal --full`: the batch script and the program it runs.
    public func signal(_ signal: String, task: String) async throws {
        _ = try await run(
            try Self.program("scancel"), ["--signal=\(signal)", "--full", task], environment: environment)
    }

    /// Runs `body` with the cluster, then stops it on a thread of its own (also when `body`
    /// throws): stopping waits for jobs and daemons to end, which must not hold one of the
    /// cooperative threads every other test's server needs (their requests timed out meanwhile).
    public func whileRunning<R: Sendable>(_ body: () async throws -> R) async throws -> R {
        let result: Result<R, any Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                self.stop()
                done.resume()
            }
        }
        return try result.get()
    }

    /// Cancels every job, stops the daemons and removes the folder. Blocks.
    public func stop() {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", Self.cleanup(base: directory, sparing: getpid())]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        if (try? p.run()) != nil { p.waitUntilExit() }
        // The daemons are this process's children: reap them.
        for pid in pids {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        }
    }

    /// A shell script that cancels the cluster's jobs (waiting up to 10 s for them to end), then
    /// kills every process holding a file under `base` (the daemons, each job's slurmstepd with
    /// its log open) and their descendants (a job's programs: with proctrack/linuxproc nothing
    /// else would end them), except `sparing`, and removes `base`. Processes are found by what
    /// they hold, not by name or by a saved id, so nothing else is ever touched.
    static func cleanup(base: String, sparing: pid_t) -> String {
        """
        conf=\(base)/slurm.conf
        if [ -f "$conf" ]; then
          SLURM_CONF=$conf scancel --full --user=root 2>/dev/null
          i=0
          while [ $i -lt 50 ] && [ -n "$(SLURM_CONF=$conf squeue -h 2>/dev/null)" ]; do sleep 0.2; i=$((i+1)); done
        fi
        held=$(for p in /proc/[0-9]*; do ls -l "$p/fd" 2>/dev/null | grep -qF -- '-> \(base)/' && echo "${p#/proc/}"; done | tr '\n' ' ')
        if [ -n "$held" ]; then
          # "pid ppid" of every process (the name in /proc/*/stat may hold spaces: cut after its ')').
          for p in /proc/[0-9]*; do
            s=$(sed 's/.*) //' "$p/stat" 2>/dev/null) && set -- $s && echo "${p#/proc/} $2"
          done | awk -v roots="$held" -v spare=\(sparing) '
            # Membership by `in` only: reading hit[x] would add x to the set.
            BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) if (r[i] != spare && r[i] > 1) hit[r[i]] = 1 }
            { pid[NR] = $1; parent[NR] = $2 }
            END {
              for (changed = 1; changed;) {
                changed = 0
                for (i = 1; i <= NR; i++)
                  if (!(pid[i] in hit) && (parent[i] in hit) && pid[i] != spare) { hit[pid[i]] = 1; changed = 1 }
              }
              for (p in hit) print p
            }' | xargs -r kill -9 2>/dev/null
        fi
        rm -rf \(base)
        """
    }

    /// Cleans up (see `cleanup`) when the test process ends, however it ends: a shell reading a
    /// pipe whose only writer is this process (its end comes with the process's). Started before
    /// any daemon.
    static func watch(base: String) throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw HarnessError("pipe() failed: \(String(cString: strerror(errno)))") }
        // Both ends close-on-exec: the writer stays open for the life of this process and in no
        // child; the reader becomes the watcher's standard input.
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        defer { close(ends[0]) }
        let script = "cat > /dev/null\n" + cleanup(base: base, sparing: 0)
        _ = try ChildProcess.spawn("/bin/sh", ["-c", script], log: "/dev/null", input: ends[0])
    }
}
