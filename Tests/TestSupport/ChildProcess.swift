import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A program a test starts and stops itself (a server under test, nginx): started with
/// `posix_spawn`, output to a log file, stopped with a signal and reaped with `waitpid` — not
/// Foundation's `Process`, whose wait for a child's end can hang in an async test on Linux.
public final class ChildProcess: Sendable {
    public let pid: pid_t

    /// Starts `executable` (a path) with this process's environment plus `environment`.
    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], log: String) throws {
        pid = try Self.spawn(executable, arguments, environment: environment, log: log)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT…).
    public func signal(_ signal: Int32) { Glibc.kill(pid, signal) }

    /// SIGKILL, and waits for the end (at once: nothing can delay a killed process's end).
    public func kill() {
        Glibc.kill(pid, SIGCONT)
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1, errno == EINTR {}
    }

    /// Starts a command with its output appended to `log` and none of this process's other
    /// files open: `pg_ctl start` leaves the server running, and a server holding one of our
    /// pipes would keep a reader of that pipe waiting for its end (Foundation's `Process` waits
    /// on such a pipe to report termination, hence `posix_spawn` here).
    /// `input` becomes the command's standard input (else /dev/null).
    public static func spawn(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:], log: String,
        input: Int32? = nil
    ) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let input {
            posix_spawn_file_actions_adddup2(&actions, input, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // glibc 2.34's closefrom action, looked up: Swift's Glibc module does not declare it.
        guard let closeFrom = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
        else { throw HarnessError("this C library cannot close inherited files in a child (glibc 2.34 or later)") }
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        _ = unsafeBitCast(closeFrom, to: CloseFrom.self)(&actions, 3)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        let merged = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let envp: [UnsafeMutablePointer<CChar>?] = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for e in envp { free(e) } }
        var pid = pid_t()
        let status = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        guard status == 0 else {
            throw HarnessError("cannot start \(executable): \(String(cString: strerror(status)))")
        }
        return pid
    }

    /// Runs a command to its end without blocking a cooperative thread (the wait is on a thread
    /// of its own); its output goes to `log`, quoted in the error when it fails.
    public static func run(_ executable: String, _ arguments: [String], log: String) async throws {
        let pid = try spawn(executable, arguments, log: log)
        let status = await withCheckedContinuation { (c: CheckedContinuation<Int32, Never>) in
            Thread.detachNewThread {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) == -1, errno == EINTR {}
                c.resume(returning: status)
            }
        }
        guard status == 0 else {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            throw HarnessError("\(executable) \(arguments.joined(separator: " ")) failed (\(status)): \(text)")
        }
    }

    /// Runs `script` (sh) once this test process is gone, however it ends (a crash included): the
    /// script starts now and first reads a pipe whose only writer is this process, so it goes on
    /// when the kernel closes that pipe with the process. `asUser` runs it as another user (through
    /// `runuser`, when we are root).
    public static func whenThisProcessEnds(run script: String, asUser user: String? = nil) throws {
        var ends: [Int32] = [0, 0]
        // Both ends close-on-exec: the writer stays open for the life of this process and in no
        // child; the reader becomes the script's standard input.
        guard pipe(&ends) == 0 else { throw HarnessError("pipe() failed: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        defer { close(ends[0]) }
        let body = "cat > /dev/null\n" + script
        if let user, getuid() == 0 {
            _ = try spawn(
                "/usr/sbin/runuser", ["-u", user, "--", "/bin/sh", "-c", body], log: "/dev/null", input: ends[0])
        } else {
            _ = try spawn("/bin/sh", ["-c", body], log: "/dev/null", input: ends[0])
        }
    }
}
