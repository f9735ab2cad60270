import Foundation
import GeoGrid
import Logging
import Pyramid
import Raster
import TestSupport
import Testing

@testable import Tiler

/// The cluster protocol: a plan, workers each building a share of the deepest bands, and a
/// finisher make the very pyramid one process makes; reruns change nothing; a stale or
/// mismatched plan is refused before anything is written.
@Suite(.blocking) struct ClusterTests {
    static let grids = ["2154_5cm", "PM"]

    static func definition(_ sources: [String]) -> TilesetDefinition {
        TilesetDefinition(id: "t", sources: sources, grids: grids)
    }

    static func quietLogger() -> Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    /// Plans into `store` and returns the plan as a worker reads it back from `file`.
    static func plan(_ sources: [String], store: String, file: String) throws -> ClusterPlan {
        let options = TileOptions(store: store, tmsDirectory: Fixture.tmsDirectory)
        let made = try Tiler(definition: definition(sources), options: options, logger: quietLogger()).makePlan()
        try made.plan.write(to: file)
        return try ClusterPlan.load(path: file)
    }

    /// Runs a worker or the finisher of `plan` in this process.
    @discardableResult
    static func runPlan(_ plan: ClusterPlan, _ role: ClusterRun.Role) throws -> TilingSummary {
        var options = TileOptions(store: plan.store, tmsDirectory: Fixture.tmsDirectory)
        options.threads = 2
        options.cluster = ClusterRun(plan: plan, role: role)
        let logger = quietLogger()
        return try Tiler(
            definition: plan.tileset, options: options, logger: logger,
            progress: Progress(logger: logger, interactive: false)
        ).run()
    }

    /// Every file and folder under `root` as the file system sees it: a rewritten file changes
    /// its inode or date, a new one appears.
    struct Entry: Equatable {
        var inode: UInt64
        var size: Int
        var modified: Double
        var crc32: UInt32
    }

    static func snapshot(_ root: String) -> [String: Entry] {
        var out: [String: Entry] = [:]
        let e = FileManager.default.enumerator(atPath: root)
        while let f = e?.nextObject() as? String {
            var st = stat()
            guard stat(root + "/" + f, &st) == 0 else { continue }
            let isFile = (st.st_mode & S_IFMT) == S_IFREG
            let data = isFile ? (try? Data(contentsOf: URL(fileURLWithPath: root + "/" + f))) ?? Data() : Data()
            out[f] = Entry(
                inode: UInt64(st.st_ino), size: isFile ? Int(st.st_size) : 0,
                modified: isFile ? Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9 : 0,
                crc32: data.withUnsafeBytes { Deflate.crc32($0) })
        }
        return out
    }

    @Test func threeWorkersAndAFinisherMakeTheOneProcessPyramid() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (_, plan) = try await Self.planBesideOneProcess(in: dir)
        #expect(plan.grids.map(\.id) == Self.grids)
        #expect(plan.grids.map(\.jobs.count) == [4, 4])
        #expect(plan.grids.allSatisfy { $0.base == 0 && $0.generation == 1 })

        // The finisher before any worker: refused, saying how many shards are missing; nothing written.
        let before = Self.snapshot(dir + "/cluster")
        #expect {
            try Self.runPlan(plan, .finish)
        } throws: { "\($0)".contains("8 shard(s) of the deepest band are not built yet") }
        #expect(Self.snapshot(dir + "/cluster") == before)

        // Three workers, one after the other here: disjoint shares covering every job.
        var built: [Int] = []
        for i in 0..<3 {
            let share = try WorkerShare(index: i, count: 3)
            let summary = try await Blocking.run { try Self.runPlan(plan, .worker(share)) }
            built.append(summary.grids.reduce(0) { $0 + $1.shardsBuilt })
            #expect(summary.grids.flatMap(\.failed).isEmpty)
        }
        #expect(built.reduce(0, +) == 8)
        #expect(built.allSatisfy { $0 > 0 })
        for g in plan.grids {
            let records = PyramidFolder(dir + "/cluster/t/\(g.tileMatrixSet.id)").records()
            #expect(Set(records.keys) == Set(g.jobs.map(\.coordinate)))
            #expect(records.values.allSatisfy { $0.plan == g.plan })
        }
        // No manifest before the finisher.
        #expect(!FileManager.default.fileExists(atPath: dir + "/cluster/t/2154_5cm/pyramid.json"))

        // A worker run again (retried by the scheduler): not a file touched.
        let workersDone = Self.snapshot(dir + "/cluster")
        let again = try await Blocking.run {
            try Self.runPlan(plan, .worker(try WorkerShare(index: 1, count: 3)))
        }
        #expect(again.grids.reduce(0) { $0 + $1.shardsBuilt } == 0)
        #expect(Self.snapshot(dir + "/cluster") == workersDone)

        let finished = try await Blocking.run { try Self.runPlan(plan, .finish) }
        #expect(finished.grids.map(\.generation) == [1, 1])
        try Self.expectTheOneProcessPyramid(in: dir)

        // After the finish, a late worker or a second finisher: nothing to do, nothing touched.
        let done = Self.snapshot(dir + "/cluster")
        try await Blocking.run {
            try Self.runPlan(plan, .worker(try WorkerShare(index: 2, count: 3)))
            try Self.runPlan(plan, .finish)
        }
        #expect(Self.snapshot(dir + "/cluster") == done)
    }

    /// The sources tiled by one process into `<dir>/one`: what the cluster must make.
    static func tileInOneProcess(_ sources: [String], in dir: String) async throws {
        _ = try await Blocking.run {
            try Fixture.tile(sources, store: dir + "/one", grids: Self.grids)
        }
    }

    /// Four shards' dalles in `dir`, tiled by one process into `<dir>/one` and planned into
    /// `<dir>/cluster`: the plan file and the plan.
    static func planBesideOneProcess(in dir: String) async throws -> (file: String, plan: ClusterPlan) {
        let sources = try GenerationTests.fourShards(in: dir)
        try await tileInOneProcess(sources, in: dir)
        let file = dir + "/plan.json"
        return (file, try plan(sources, store: dir + "/cluster", file: file))
    }

    /// Each grid of `<dir>/cluster` is the pyramid of `<dir>/one`.
    static func expectTheOneProcessPyramid(in dir: String) throws {
        for grid in Self.grids {
            try Self.expectSamePyramid(dir + "/cluster/t/\(grid)", dir + "/one/t/\(grid)")
        }
    }

    /// The manifests are the same but for `created`, and every shard file has the CRC listed.
    static func expectSamePyramid(_ a: String, _ b: String) throws {
        func manifest(_ dir: String) throws -> [String: Any] {
            let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/pyramid.json"))
            var m = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            m["created"] = nil
            return m
        }
        let (x, y) = (try manifest(a), try manifest(b))
        let text = { (m: [String: Any]) in
            String(decoding: try JSONSerialization.data(withJSONObject: m, options: .sortedKeys), as: UTF8.self)
        }
        #expect(try text(x) == text(y), "\(a) and \(b) differ")
        let m = try #require(try PyramidFolder(a).current())
        #expect(!m.shards.isEmpty)
        for s in m.shards {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: a + "/" + s.path))
            #expect(String(format: "%08x", bytes.withUnsafeBytes { Deflate.crc32($0) }) == s.crc32, "\(s.path)")
        }
    }

    @Test func twoCopiesOfOneWorkerAtOnceChangeNothing() async throws {
        // A scheduler may start a task twice (a requeue while the first still runs): both build
        // the same share into the same paths, with the same bytes; the result is one pyramid.
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (planFile, _) = try await Self.planBesideOneProcess(in: dir)
        async let first = run(Fixture.executable, ["tile", "--plan", planFile, "--worker", "0/2"])
        async let second = run(Fixture.executable, ["tile", "--plan", planFile, "--worker", "0/2"])
        let outputs = try await [first, second]
        #expect(outputs.allSatisfy { $0.contains("worker 0/2 of plan") })
        _ = try await run(Fixture.executable, ["tile", "--plan", planFile, "--worker", "1/2"])
        _ = try await run(Fixture.executable, ["tile", "--plan", planFile, "--finish"])
        try Self.expectTheOneProcessPyramid(in: dir)
    }

    @Test func aTrancheOnAClusterRebuildsWhatOneProcessRebuilds() async throws {
        // Generation 1 in two stores alike, then a dalle added: one process and the cluster
        // protocol make the same generation 2 (same shards rebuilt, same paths, same bytes).
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try GenerationTests.fourShards(in: dir)
        let added = try GenerationTests.neighbour(in: dir)
        for store in ["one", "cluster"] {
            _ = try await Blocking.run {
                try Fixture.tile(first, store: dir + "/" + store, grids: Self.grids)
            }
        }
        _ = try await Blocking.run {
            try Fixture.tile(first + added, store: dir + "/one", grids: Self.grids)
        }
        let plan = try Self.plan(first + added, store: dir + "/cluster", file: dir + "/plan.json")
        #expect(plan.grids.map(\.base) == [1, 1] && plan.grids.map(\.generation) == [2, 2])
        // Only the shard the new dalle lies in, per grid; the other three are reused.
        #expect(plan.grids.map(\.jobs.count) == [1, 1] && plan.grids.map(\.reused) == [3, 3])
        try await Blocking.run {
            for i in 0..<2 { try Self.runPlan(plan, .worker(try WorkerShare(index: i, count: 2))) }
            try Self.runPlan(plan, .finish)
        }
        try Self.expectTheOneProcessPyramid(in: dir)
    }

    @Test func aWorkerKilledMidwayAndRunAgainKeepsWhatItHadDone() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (planFile, plan) = try await Self.planBesideOneProcess(in: dir)
        let total = plan.jobCount
        let folders = Self.grids.map { PyramidFolder(dir + "/cluster/t/\($0)") }
        let recorded: @Sendable () -> Int = { folders.reduce(0) { $0 + $1.records().count } }

        // One worker for the whole plan, killed with SIGKILL as soon as its first shard is recorded
        // (watched every 2 ms from a thread of its own); tried again if the machine is so loaded
        // that it finished first.
        var atKill = 0
        for _ in 0..<3 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Fixture.executable)
            p.arguments = ["tile", "--plan", planFile, "--worker", "0/1", "--threads", "1"]
            p.standardError = FileHandle.nullDevice
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            atKill = try await Blocking.onThreadOfItsOwn {
                let seen = Fixture.poll(timeout: 120) { !p.isRunning || recorded() > 0 }
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
                guard seen else { return 0 }
                p.waitUntilExit()
                return p.terminationReason == .uncaughtSignal ? recorded() : total
            }
            if atKill >= 1 && atKill < total { break }
            for f in folders { f.clearRecords() }
        }
        try #require(atKill >= 1 && atKill < total, "no worker could be killed midway (\(atKill) of \(total) shards)")

        // Run again, it builds only what was not recorded and leaves the rest as it was: the records
        // and the shards they name. (A shard renamed into place but not yet recorded at the kill,
        // its record still behind the flush, is built again, as it must be.)
        var recordedFiles = Set<String>()
        for (grid, folder) in zip(Self.grids, folders) {
            for (shard, record) in folder.records() {
                recordedFiles.insert("t/\(grid)/" + BucketPyramid.recordPath(shard))
                if let path = record.path { recordedFiles.insert("t/\(grid)/" + path) }
            }
        }
        let done = Self.snapshot(dir + "/cluster").filter { recordedFiles.contains($0.key) }
        #expect(done.count == recordedFiles.count, "\(recordedFiles.subtracting(done.keys))")
        let output = try await run(Fixture.executable, ["tile", "--plan", planFile, "--worker", "0/1"])
        #expect(output.contains("\(total - atKill) built, \(atKill) done before, 0 failed"), "\(output)")
        let after = Self.snapshot(dir + "/cluster")
        for (path, entry) in done {
            #expect(after[path] == entry, "\(path) was rewritten")
        }
        _ = try await run(Fixture.executable, ["tile", "--plan", planFile, "--finish"])
        try Self.expectTheOneProcessPyramid(in: dir)
    }

    @Test func aStalePlanIsRefusedBeforeAnythingIsWritten() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try GenerationTests.fourShards(in: dir)
        let plan = try Self.plan(sources, store: dir + "/store", file: dir + "/plan.json")
        let share = try WorkerShare(index: 0, count: 2)

        // Another build (of three of the dalles) switched the pyramid since the plan: its
        // generation would be lost. (The same build of the same dalles would have made this
        // plan's generation: a worker then has nothing to do.)
        _ = try await Blocking.run {
            try Fixture.tile(Array(sources.dropLast()), store: dir + "/store", grids: Self.grids)
        }
        let switched = Self.snapshot(dir + "/store")
        for role in [ClusterRun.Role.worker(share), .finish] {
            #expect {
                try Self.runPlan(plan, role)
            } throws: { "\($0)".contains("another build switched it since the plan was made") }
        }
        #expect(Self.snapshot(dir + "/store") == switched)

        // A dalle rewritten since the plan: workers would mix two states of the sources.
        try FileManager.default.setAttributes(
            [.modificationDate: Date(timeIntervalSinceNow: 60)], ofItemAtPath: sources[1])
        for role in [ClusterRun.Role.worker(share), .finish] {
            #expect {
                try Self.runPlan(plan, role)
            } throws: { "\($0)".contains("1 source dalle(s) changed on disk since plan \(plan.id)") }
        }
        #expect(Self.snapshot(dir + "/store") == switched)

        // A plan of another version, or not a plan at all.
        var old = plan
        old.version = 0
        try old.write(to: dir + "/old.json")
        #expect { try ClusterPlan.load(path: dir + "/old.json") } throws: { "\($0)".contains("plan of version 0") }
        #expect { try ClusterPlan.load(path: dir + "/store/t/PM/pyramid.json") } throws: {
            "\($0)".contains("is not a dallage tile plan")
        }
    }

    @Test(arguments: [
        ("3/3", "worker index 3 is out of range for 3 worker(s) (0…2)"),
        ("-1/3", "worker index -1 is out of range"),
        ("0/0", "the number of workers must be 1…100000, not 0"),
        ("1", "--worker takes I/N"),
        ("a/b", "--worker takes I/N"),
    ])
    func aWorkerShareOutOfRangeIsRefused(text: String, message: String) {
        #expect { try WorkerShare(parsing: text) } throws: { "\($0)".contains(message) }
    }

    @Test func automaticSharesComeFromTheScheduler() throws {
        let slurm = ["SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"]
        #expect(try WorkerShare.automatic(environment: slurm, workers: nil) == (try WorkerShare(index: 2, count: 4)))
        #expect(try WorkerShare.automatic(environment: slurm, workers: 4) == (try WorkerShare(index: 2, count: 4)))
        #expect { try WorkerShare.automatic(environment: slurm, workers: 3) } throws: {
            "\($0)".contains("--workers 3 disagrees with the Slurm array's 4 task(s)")
        }
        var stepped = slurm
        stepped["SLURM_ARRAY_TASK_STEP"] = "2"
        #expect { try WorkerShare.automatic(environment: stepped, workers: nil) } throws: {
            "\($0)".contains("steps by 2")
        }
        let k8s = ["JOB_COMPLETION_INDEX": "3"]
        #expect(try WorkerShare.automatic(environment: k8s, workers: 5) == (try WorkerShare(index: 3, count: 5)))
        #expect { try WorkerShare.automatic(environment: k8s, workers: nil) } throws: {
            "\($0)".contains("needs --workers N")
        }
        #expect { try WorkerShare.automatic(environment: k8s, workers: 3) } throws: {
            "\($0)".contains("worker index 3 is out of range for 3 worker(s)")
        }
        #expect { try WorkerShare.automatic(environment: [:], workers: 3) } throws: {
            "\($0)".contains("neither SLURM_ARRAY_TASK_ID")
        }
    }

    @Test func sharesAreBalancedByEstimatedWork() throws {
        // One costly shard and ten cheap ones for two workers: one worker takes the costly one
        // alone (an even count would give each worker five and a half shards' worth).
        let tms = TileMatrixSet(id: "g", crs: "EPSG:2154", tileMatrices: [])
        var grid = ClusterPlan.Grid(
            id: "g", tileMatrixSet: tms, minZoom: nil, maxZoom: nil,
            scheme: ShardScheme(minZoom: 0, maxZoom: 7, levelsPerBand: 7), base: 0, generation: 1, plan: "p",
            settings: "", shardsPerBand: [11], reused: 0, jobs: [])
        grid.jobs = [ClusterPlan.Job(z: 0, col: 0, row: 0, work: 1)]
        grid.jobs += (1...9).map { ClusterPlan.Job(z: 0, col: $0, row: 0, work: 1) }
        grid.jobs.insert(ClusterPlan.Job(z: 0, col: 99, row: 0, work: 10), at: 4)
        let plan = ClusterPlan(
            kind: ClusterPlan.kind, version: ClusterPlan.currentVersion, id: "p", tool: "", created: "", store: "",
            tileset: Self.definition(["x.tif"]),
            sources: ClusterPlan.Sources(digest: "", crs: [], dalles: []), grids: [grid])
        let shares = plan.shares(workers: 2)
        let costly = try #require(shares.firstIndex { $0.contains { $0.job == 4 } })
        #expect(shares[costly].count == 1)
        #expect(shares[1 - costly].count == 10)
        // Every job once, and the same answer every time (workers compute it apart).
        #expect(shares.flatMap { $0.map(\.job) }.sorted() == Array(0..<11))
        #expect(plan.shares(workers: 2).map { $0.map(\.job) } == shares.map { $0.map(\.job) })
        // More workers than jobs: the extra ones have nothing to do.
        #expect(plan.shares(workers: 20).filter(\.isEmpty).count == 9)
    }

    @Test func theCommandLineRefusesMisusedClusterFlags() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try GenerationTests.fourShards(in: dir)
        let planFile = dir + "/plan.json"
        _ = try Self.plan(sources, store: dir + "/store", file: planFile)
        let before = Self.snapshot(dir)
        let cases: [([String], String)] = [
            (["--worker", "0/2"], "--worker needs --plan FILE"),
            (["--finish"], "--finish needs --plan FILE"),
            (["--plan", planFile], "--plan needs --worker I/N (or auto) or --finish"),
            (["--plan", planFile, "--worker", "2/2"], "worker index 2 is out of range for 2 worker(s)"),
            (["--plan", planFile, "--worker", "0/2", "--finish"], "--worker and --finish are separate runs"),
            (["--plan", planFile, "--worker", "0/2", "--workers", "2"], "--workers goes with --worker auto"),
            (["--plan", planFile, "--worker", "0/2", "--quality", "50"], "differ from plan"),
            (["--plan", planFile, "--worker", "0/2", "--store", dir + "/elsewhere"], "is not the plan's store"),
            (["--plan", dir + "/nothing.json", "--finish"], "cannot read the plan"),
        ]
        for (arguments, message) in cases {
            await #expect {
                _ = try await run(Fixture.executable, ["tile"] + arguments)
            } throws: { "\($0)".contains(message) }
        }
        // Under Slurm, --workers must match the array.
        await #expect {
            _ = try await run(
                Fixture.executable, ["tile", "--plan", planFile, "--worker", "auto", "--workers", "3"],
                environment: ["SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"])
        } throws: { "\($0)".contains("--workers 3 disagrees with the Slurm array's 2 task(s)") }
        #expect(Self.snapshot(dir) == before)
    }
}
