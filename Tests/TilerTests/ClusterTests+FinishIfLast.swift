import Foundation
import Pyramid
import TestSupport
import Testing

@testable import Tiler

/// `--worker … --finish-if-last`: the worker that ends last finishes the plan itself, in real
/// processes, into a folder and into a bucket; the others exit 0 saying the shards still missing;
/// two that end together make one switch between them, both exiting 0.
extension ClusterTests {
    static let notYet = "shard(s) of other workers not built yet: the last worker or the finisher job will finish"

    @Test func theLastWorkerToEndFinishesThePlan() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (planFile, _) = try await Self.planBesideOneProcess(in: dir)
        let manifest = dir + "/cluster/t/2154_5cm/pyramid.json"

        // The first worker to end: its share built, others missing; no manifest, exit 0.
        let first = try await run(
            Fixture.executable, ["tile", "--plan", planFile, "--worker", "0/2", "--finish-if-last"])
        #expect(first.contains("worker 0/2 of plan"), "\(first)")
        #expect(first.contains(Self.notYet), "\(first)")
        #expect(!FileManager.default.fileExists(atPath: manifest))

        // The last: it finishes, as --finish would.
        let last = try await run(
            Fixture.executable, ["tile", "--plan", planFile, "--worker", "1/2", "--finish-if-last"])
        #expect(last.contains("worker 1/2 of plan"), "\(last)")
        #expect(!last.contains(Self.notYet), "\(last)")
        try Self.expectTheOneProcessPyramid(in: dir)
        for grid in Self.grids {
            #expect(PyramidFolder(dir + "/cluster/t/\(grid)").records().isEmpty)
        }

        // The finisher job afterwards (the safety net): nothing to do, nothing touched, exit 0.
        let done = Self.snapshot(dir + "/cluster")
        _ = try await run(Fixture.executable, ["tile", "--plan", planFile, "--finish"])
        #expect(Self.snapshot(dir + "/cluster") == done)
    }

    @Test func twoLastWorkersEndingTogetherSwitchOnceAndBothSucceed() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (planFile, _) = try await Self.planBesideOneProcess(in: dir)
        for i in 0..<2 {
            _ = try await run(Fixture.executable, ["tile", "--plan", planFile, "--worker", "\(i)/2"])
        }
        // Two copies of the last worker at once (a requeue, or two shares ending together): each
        // finds its share recorded at once and every shard built, and both finish together.
        let again = ["tile", "--plan", planFile, "--worker", "1/2", "--finish-if-last"]
        async let a = run(Fixture.executable, again)
        async let b = run(Fixture.executable, again)
        let outputs = try await [a, b]  // both exit 0 (run throws otherwise)
        #expect(outputs.allSatisfy { !$0.contains(Self.notYet) }, "\(outputs)")
        try Self.expectTheOneProcessPyramid(in: dir)
        for grid in Self.grids {
            let folder = PyramidFolder(dir + "/cluster/t/\(grid)")
            #expect(try folder.current()?.generation == 1)
            // One switch: generation 1 only, nothing left of the loser.
            let generations = try FileManager.default.contentsOfDirectory(atPath: folder.path("generations"))
            #expect(Set(generations) == ["1.json", "1.sources.json"], "\(generations)")
            #expect(folder.records().isEmpty)
        }
        _ = try await run(Fixture.executable, ["tile", "--plan", planFile, "--finish"])
    }
}

extension ClusterTests.OnABucket {
    /// Four shards' dalles in `dir`, planned into a fresh store of the bucket (the plan file
    /// `<dir>/plan.json`) and tiled into another in one process, both through the command line
    /// staging in `<dir>/staging`: both stores' key prefixes and the staging arguments.
    func planAndOneProcess(in dir: String) async throws -> (one: String, prefix: String, staging: [String]) {
        let sources = try GenerationTests.fourShards(in: dir)
        let staging = ["--staging", dir + "/staging"]
        let environment = try server.environment
        let (oneURL, one) = Self.store()
        let (url, prefix) = Self.store()
        for (store, extra) in [(oneURL, [String]()), (url, ["--plan-out", dir + "/plan.json"])] {
            _ = try await TestSupport.run(
                Fixture.executable,
                [
                    "tile", "--id", "t", "--tms", "2154_5cm", "--tms", "PM", "--store", store, "--tms-dir",
                    Fixture.tmsDirectory,
                ] + extra + staging + sources, environment: environment)
        }
        return (one, prefix, staging)
    }

    @Test func theLastWorkerToEndFinishesThePlanInABucket() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let environment = try server.environment
        let (one, prefix, staging) = try await planAndOneProcess(in: dir)
        let plan = ["tile", "--plan", dir + "/plan.json"]

        let first = try await TestSupport.run(
            Fixture.executable, plan + ["--worker", "0/2", "--finish-if-last"] + staging, environment: environment)
        #expect(first.contains(ClusterTests.notYet), "\(first)")
        #expect(try await objects(under: prefix).keys.allSatisfy { !$0.hasSuffix("/pyramid.json") })

        let last = try await TestSupport.run(
            Fixture.executable, plan + ["--worker", "1/2", "--finish-if-last"] + staging, environment: environment)
        #expect(!last.contains(ClusterTests.notYet), "\(last)")
        try await expectTheOneProcessPyramid(prefix, one)
        // Nothing left in the staging folder: the workers' and the finish's own folders are gone.
        let left = FileManager.default.subpaths(atPath: dir + "/staging/dallage-staging") ?? []
        #expect(!left.contains { $0.contains("worker-") || $0.contains("finish-") }, "\(left)")

        try await Self.afterTheNextSecond()
        let done = try await objects(under: prefix)
        _ = try await TestSupport.run(Fixture.executable, plan + ["--finish"] + staging, environment: environment)
        #expect(try await objects(under: prefix) == done)
    }

    @Test func twoLastWorkersEndingTogetherSwitchOnceInABucket() async throws {
        // On one host here, but each worker and each finish stages in a folder of its own: the two
        // race only in the bucket, where the manifest's conditional PUT lets one switch; the other recognises
        // the plan's generation there and exits 0.
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let environment = try server.environment
        let (one, prefix, staging) = try await planAndOneProcess(in: dir)
        let plan = ["tile", "--plan", dir + "/plan.json"]
        for i in 0..<2 {
            _ = try await TestSupport.run(
                Fixture.executable, plan + ["--worker", "\(i)/2"] + staging, environment: environment)
        }
        // Both workers again at once (retried by the scheduler): each finds its share recorded and
        // every shard built, and both finish together.
        let again0 = plan + ["--worker", "0/2", "--finish-if-last"] + staging
        let again1 = plan + ["--worker", "1/2", "--finish-if-last"] + staging
        async let a = TestSupport.run(Fixture.executable, again0, environment: environment)
        async let b = TestSupport.run(Fixture.executable, again1, environment: environment)
        let outputs = try await [a, b]  // both exit 0
        #expect(outputs.allSatisfy { !$0.contains(ClusterTests.notYet) }, "\(outputs)")
        try await expectTheOneProcessPyramid(prefix, one)
        let keys = try await objects(under: prefix).keys
        for grid in ClusterTests.grids {
            let generations = keys.filter { $0.hasPrefix("t/\(grid)/generations/") }
            #expect(Set(generations) == ["t/\(grid)/generations/1.json", "t/\(grid)/generations/1.sources.json"])
        }
        _ = try await TestSupport.run(Fixture.executable, plan + ["--finish"] + staging, environment: environment)
    }
}
