import Foundation
import Pyramid
import TestSupport
import Testing

@testable import Tiler

/// The Slurm template (`deploy/slurm`) on a real single-node Slurm, into a shared folder and into
/// an `s3://` store (SeaweedFS): `submit.sh` plans, submits an array of four workers and the
/// finisher behind them, and the pyramid is the one a single process makes; a worker killed
/// midway is run again by hand, then the finisher, as the README says; a worker run again as a
/// job after the finish changes nothing.
@Suite(
    .serialized, .seaweedFS, .blocking,
    .enabled(if: SlurmTestCluster.isInstalled, Comment(rawValue: SlurmTestCluster.notInstalled)))
struct SlurmClusterTests {
    enum Store: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case folder, bucket
        var testDescription: String { rawValue }
    }

    @Test(arguments: Store.allCases)
    func anArrayOfFourWorkersAndAFinisherMakeTheOneProcessPyramid(_ store: Store) async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try GenerationTests.fourShards(in: dir)
        let bucket = ClusterTests.OnABucket()
        // Into a bucket: the AWS_* variables pass through sbatch (its default --export=ALL) to
        // every job; each job stages its shards under TMPDIR.
        var environment = [
            "DALLAGE": Fixture.executable, "DALLAGE_TMS_DIR": Fixture.tmsDirectory, "LOG_DIR": dir + "/logs",
        ]
        let target: String
        let oneProcess: String
        switch store {
        case .folder:
            try await ClusterTests.tileInOneProcess(sources, in: dir)
            target = dir + "/cluster"
            oneProcess = dir + "/one"
        case .bucket:
            environment.merge(try bucket.server.environment) { $1 }
            environment["TMPDIR"] = dir + "/tmp"
            try FileManager.default.createDirectory(atPath: dir + "/tmp", withIntermediateDirectories: true)
            let one = ClusterTests.OnABucket.store()
            let cluster = ClusterTests.OnABucket.store()
            let aws = environment
            _ = try await Blocking.run {
                try Fixture.tile(sources, store: one.url, grids: ClusterTests.grids) { options in
                    options.environment = aws
                    options.staging = dir + "/staging-one"
                }
            }
            target = cluster.url
            oneProcess = one.prefix
        }
        /// What is in the store: files with their inodes and dates, or objects with their dates.
        func snapshot() async throws -> [String: String] {
            switch store {
            case .folder: ClusterTests.snapshot(target).mapValues { "\($0)" }
            case .bucket: try await bucket.objects(under: Self.prefix(target)).mapValues(\.description)
            }
        }

        let slurm = try await SlurmTestCluster.start()
        try await slurm.whileRunning {
            let plan = dir + "/plan.json"
            let submitted = try await run(
                Fixture.root + "/deploy/slurm/submit.sh",
                ["4", plan, "--id", "t", "--tms", "2154_5cm", "--tms", "PM", "--store", target] + sources,
                environment: slurm.environment.merging(environment) { $1 })
            // "workers: job A (4 task(s)); finisher: job F"
            let ids = submitted.split(separator: "\n").last?.split(separator: " ").compactMap { word -> String? in
                let digits = word.trimmingCharacters(in: CharacterSet(charactersIn: ";"))
                return Int(digits) != nil && !word.hasPrefix("(") ? digits : nil
            }
            let jobs = try #require(ids, "submit.sh said: \(submitted)")
            try #require(jobs.count == 2, "submit.sh said: \(submitted)")

            // Worker 1 killed (SIGKILL) as soon as it says it has started on its share.
            let log = dir + "/logs/dallage-tile-\(jobs[0])_1.out"
            try await eventually("worker 1/4 to start", timeout: .seconds(600), every: .milliseconds(10)) {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                return text.contains("% of the estimated work") || text.contains("shard(s) in its share")
            }
            try? await slurm.signal("KILL", task: "\(jobs[0])_1")
            let states = try await slurm.waitUntilEnded(jobs)
            let array = try #require(states[jobs[0]])
            #expect(array.count == 4)
            #expect(array.filter { $0 == "COMPLETED" }.count >= 3, "\(states)\n\(Self.logs(dir + "/logs"))")
            if array.allSatisfy({ $0 == "COMPLETED" }) {
                // The worker ended before the kill reached it (a loaded machine): the finisher ran.
                #expect(states[jobs[1]] == ["COMPLETED"], "\(states)\n\(Self.logs(dir + "/logs"))")
            } else {
                // The finisher was cancelled with the worker (afterok); nothing is current yet.
                #expect(states[jobs[1]] == ["CANCELLED"], "\(states)")
                #expect(try await !snapshot().keys.contains { $0.hasSuffix("pyramid.json") })
                // The README's way back: the task again by hand, then the finisher.
                for arguments in [["worker", plan, "1/4"], ["finish", plan]] {
                    let job = try await slurm.submit(
                        [
                            "--output=\(dir)/logs/again-%j.out", Fixture.root + "/deploy/slurm/dallage-tile.sbatch",
                        ] + arguments, environment: environment)
                    do {
                        try await slurm.waitForCompletion(of: [job])
                    } catch {
                        Issue.record("\(error)\n\(Self.logs(dir + "/logs"))")
                        throw error
                    }
                }
            }
            switch store {
            case .folder: try ClusterTests.expectTheOneProcessPyramid(in: dir)
            case .bucket: try await bucket.expectTheOneProcessPyramid(Self.prefix(target), oneProcess)
            }
            // Each worker said what it did.
            let logs = Self.logs(dir + "/logs")
            for i in 0..<4 { #expect(logs.contains("worker \(i)/4 of plan"), "\(logs)") }

            // Worker 1 of 4 again, as a job of its own: not a file or object of the store touched.
            if store == .bucket { try await ClusterTests.OnABucket.afterTheNextSecond() }
            let before = try await snapshot()
            let again = try await slurm.submit(
                [
                    "--output=\(dir)/logs/again-%j.out", Fixture.root + "/deploy/slurm/dallage-tile.sbatch", "worker",
                    plan, "1/4",
                ], environment: environment)
            try await slurm.waitForCompletion(of: [again])
            #expect(try await snapshot() == before)
            #expect(Self.logs(dir + "/logs").contains("is already current: nothing to do"))
        }
    }

    /// The key prefix of an `s3://bucket/prefix` store.
    static func prefix(_ url: String) -> String {
        String(url.dropFirst("s3://\(SeaweedFS.bucketName)/".count))
    }

    /// Every job's output, for a failure message.
    static func logs(_ dir: String) -> String {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
        return names.map { name in
            "== \(name)\n" + ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "")
        }.joined(separator: "\n")
    }
}
