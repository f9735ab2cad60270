import Foundation
import Pyramid
import TestSupport
import Testing

@testable import Tiler

/// The Slurm template (`deploy/slurm`) on a real single-node Slurm: `submit.sh` plans, submits an
/// array of four workers and the finisher behind them, and the pyramid is the one a single process
/// makes; a worker run again as a job changes nothing.
@Suite(
    .serialized, .blocking, .enabled(if: SlurmTestCluster.isInstalled, Comment(rawValue: SlurmTestCluster.notInstalled))
)
struct SlurmClusterTests {
    @Test func anArrayOfFourWorkersAndAFinisherMakeTheOneProcessPyramid() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try GenerationTests.fourShards(in: dir)
        try await ClusterTests.tileInOneProcess(sources, in: dir)

        let slurm = try await SlurmTestCluster.start()
        try await slurm.whileRunning {
            let plan = dir + "/plan.json"
            let environment = [
                "DALLAGE": Fixture.executable, "DALLAGE_TMS_DIR": Fixture.tmsDirectory, "LOG_DIR": dir + "/logs",
            ]
            let submitted = try await run(
                Fixture.root + "/deploy/slurm/submit.sh",
                ["4", plan, "--id", "t", "--tms", "2154_5cm", "--tms", "PM", "--store", dir + "/cluster"] + sources,
                environment: slurm.environment.merging(environment) { $1 })
            // "workers: job A (4 task(s)); finisher: job F"
            let ids = submitted.split(separator: "\n").last?.split(separator: " ").compactMap { word -> String? in
                let digits = word.trimmingCharacters(in: CharacterSet(charactersIn: ";"))
                return Int(digits) != nil && !word.hasPrefix("(") ? digits : nil
            }
            let jobs = try #require(ids, "submit.sh said: \(submitted)")
            try #require(jobs.count == 2, "submit.sh said: \(submitted)")
            do {
                try await slurm.waitForCompletion(of: jobs)
            } catch {
                Issue.record("\(error)\n\(Self.logs(dir + "/logs"))")
                throw error
            }
            // Four array tasks (a pending array is one record; each task its own once started).
            #expect(try await slurm.states(of: jobs[0]) == Array(repeating: "COMPLETED", count: 4))
            try ClusterTests.expectTheOneProcessPyramid(in: dir)
            // Each worker said what it did.
            let logs = Self.logs(dir + "/logs")
            for i in 0..<4 { #expect(logs.contains("worker \(i)/4 of plan"), "\(logs)") }

            // Worker 1 of 4 again, as a job of its own: not a file of the store touched.
            let before = ClusterTests.snapshot(dir + "/cluster")
            let again = try await slurm.submit(
                [
                    "--output=\(dir)/logs/again-%j.out", Fixture.root + "/deploy/slurm/dallage-tile.sbatch", "worker",
                    plan, "1/4",
                ], environment: environment)
            try await slurm.waitForCompletion(of: [again])
            #expect(ClusterTests.snapshot(dir + "/cluster") == before)
            #expect(Self.logs(dir + "/logs").contains("is already current: nothing to do"))
        }
    }

    /// Every job's output, for a failure message.
    static func logs(_ dir: String) -> String {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
        return names.map { name in
            "== \(name)\n" + ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "")
        }.joined(separator: "\n")
    }
}
