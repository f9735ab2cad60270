import Foundation
import NIOCore
import Server
import TestSupport
import Testing

/// `dallage serve` runs one event loop per CPU it may run on, not per core of the machine.
struct EventLoopCountTests {
    @Test(
        "the CPUs allowed are read from the kernel's affinity mask",
        arguments: [
            ("Name:\tdallage\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\n", 2 as Int?),
            ("Cpus_allowed:\t2\n", 1),
            ("Cpus_allowed:\tff,ffffffff\n", 40),
            ("Cpus_allowed:\t00000000,00000100\n", 1),
            ("Cpus_allowed:\t0\n", nil),
            ("Cpus_allowed:\tzz\n", nil),
            ("Name:\tdallage\n", nil),
        ])
    func allowedCPUs(status: String, expected: Int?) {
        #expect(EventLoopCount.allowedCPUs(status: status) == expected)
    }

    @Test("one loop per allowed CPU, never more than NIO's count, NIO's own variable first")
    func loopCount() {
        #expect(EventLoopCount.forThisProcess(environment: [:], allowed: 1) == 1)
        #expect(EventLoopCount.forThisProcess(environment: [:], allowed: 4096) == System.coreCount)
        #expect(EventLoopCount.forThisProcess(environment: [:], allowed: nil) == System.coreCount)
        #expect(EventLoopCount.forThisProcess(environment: ["NIO_SINGLETON_GROUP_LOOP_COUNT": "3"], allowed: 1) == 3)
        for unusable in ["x", "0", "-2", "5000"] {
            #expect(
                EventLoopCount.forThisProcess(environment: ["NIO_SINGLETON_GROUP_LOOP_COUNT": unusable], allowed: 1)
                    == 1)
        }
    }

    /// The server under `taskset -c 0` (one CPU) runs one event loop thread, and says so; unconfined
    /// it runs one per core.
    @Test("dallage serve confined to one CPU runs one event loop")
    func confinedServer() async throws {
        let binary = ServerFixture.root + "/.build/debug/dallage"
        try #require(FileManager.default.isExecutableFile(atPath: binary))
        let directory = try ServerFixture.copy()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "store: \(directory)/store\n".write(toFile: directory + "/dallage.yaml", atomically: true, encoding: .utf8)
        for (confined, expected) in [(true, 1), (false, min(System.coreCount, EventLoopCount.allowedCPUs() ?? 1))] {
            let port = try freePorts(1)[0]
            let log = directory + "/serve-\(confined).log"
            let arguments = [
                "serve", "--config", directory + "/dallage.yaml", "--port", "\(port)", "--tms-dir",
                ServerFixture.root + "/config/tms",
            ]
            let server = try ChildProcess(
                confined ? "/usr/bin/taskset" : binary, confined ? ["-c", "0", binary] + arguments : arguments,
                log: log)
            defer { server.kill() }
            let health = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/healthz"]
            try await eventually("the server to answer /healthz", timeout: .seconds(60), every: .milliseconds(100)) {
                (try? await run("curl", health)) == "200"
            }
            let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.pid)/task").map {
                try String(contentsOfFile: "/proc/\(server.pid)/task/\($0)/comm", encoding: .utf8)
            }
            let loops = threads.filter { $0.hasPrefix("NIO-SGLTN-") }
            #expect(loops.count == expected, "threads: \(threads)")
            let said = try String(contentsOfFile: log, encoding: .utf8)
            #expect(said.contains("event loops: \(expected),"), "\(said)")
        }
    }
}
