import Foundation
import GeoGrid
import Pyramid
import S3
import TestSupport
import Testing

@testable import Tiler

extension ClusterTests {
    /// The cluster protocol on an `s3://` store (a real SeaweedFS): workers build in staging folders
    /// of their own and upload shards and records; the finisher works from the bucket; the objects
    /// and manifest are those of one `dallage tile --store s3://…`; bad input is refused with
    /// nothing written to the bucket (checked with boto3).
    @Suite(.seaweedFS, .serialized)
    struct OnABucket {
        var server: SeaweedFS {
            get throws { try #require(SeaweedFS.current, "the suite's SeaweedFS server") }
        }

        /// A store no other test uses: its URL and key prefix.
        static func store() -> (url: String, prefix: String) {
            let prefix = "cluster-\(UUID().uuidString.prefix(8).lowercased())"
            return ("s3://\(SeaweedFS.bucketName)/\(prefix)", prefix)
        }

        /// `sources` tiled by one process into a new store in the bucket: its key prefix.
        static func oneProcess(_ sources: [String], in dir: String, environment: [String: String]) async throws
            -> String
        {
            let (url, prefix) = store()
            _ = try await Blocking.run {
                try Fixture.tile(sources, store: url, grids: ClusterTests.grids) { options in
                    options.environment = environment
                    options.staging = dir + "/staging-one"
                }
            }
            return prefix
        }

        /// An object as boto3 lists and reads it: a rewrite with the same bytes still changes its
        /// modification time (see `afterTheNextSecond`).
        struct ObjectState: Codable, Equatable, CustomStringConvertible {
            var etag: String
            var size: Int
            var modified: String
            var crc32: String

            var description: String { "\(size) B crc \(crc32) \(modified)" }
        }

        /// Every object under `prefix`, by key relative to it, through boto3 (an S3 client that is
        /// not ours).
        func objects(under prefix: String) async throws -> [String: ObjectState] {
            let out = try await server.boto3(
                """
                import json, zlib
                p = sys.argv[1] + "/"
                out = {}
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=p):
                    for o in page.get("Contents", []):
                        body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                        out[o["Key"][len(p):]] = {"etag": o["ETag"], "size": o["Size"],
                            "modified": o["LastModified"].isoformat(), "crc32": "%08x" % zlib.crc32(body)}
                print(json.dumps(out))
                """, arguments: [prefix])
            return try JSONDecoder().decode([String: ObjectState].self, from: Data(out.utf8))
        }

        /// Waits until the clock is past the second of every modification time S3 reported so far:
        /// a rewrite from then on shows in `LastModified` (whole seconds).
        static func afterTheNextSecond() async throws {
            let start = Date().timeIntervalSince1970.rounded(.down)
            try await eventually("the next second") { Date().timeIntervalSince1970 >= start + 1.05 }
        }

        /// The manifest of pyramid `prefix/t/grid` with `created` blanked, read with our client.
        func comparableManifest(_ prefix: String, grid: String) async throws -> String {
            let configuration = try server.configuration
            let m = try await S3Client.withClient(configuration: configuration) { client in
                try #require(
                    try await BucketPyramid(bucket: client.bucket(SeaweedFS.bucketName), prefix: "\(prefix)/t/\(grid)")
                        .current()?.manifest)
            }
            return try S3TilingTests.comparable(m)
        }

        /// The objects of `cluster` are those of `one` (shards by CRC, footprint, generation
        /// records), every shard's CRC is its manifest's, no record is left, and the manifests are
        /// equal but for `created`.
        func expectTheOneProcessPyramid(_ cluster: String, _ one: String) async throws {
            let (a, b) = (try await objects(under: cluster), try await objects(under: one))
            func comparable(_ o: [String: ObjectState]) -> [String: String] {
                o.filter { !$0.key.hasSuffix("/pyramid.json") && !$0.key.contains("/generations/") }
                    .filter { !$0.key.hasSuffix("/\(SourceIndex.fileName)") }.mapValues(\.crc32)
            }
            #expect(comparable(a) == comparable(b))
            #expect(!a.keys.contains { $0.contains("/done/") }, "records left: \(a.keys.sorted())")
            for grid in ClusterTests.grids {
                #expect(
                    try await comparableManifest(cluster, grid: grid) == comparableManifest(one, grid: grid), "\(grid)")
                let m = try await S3Client.withClient(configuration: try server.configuration) { client in
                    try #require(
                        try await BucketPyramid(
                            bucket: client.bucket(SeaweedFS.bucketName), prefix: "\(cluster)/t/\(grid)"
                        ).current()?.manifest)
                }
                #expect(!m.shards.isEmpty)
                for s in m.shards { #expect(a["t/\(grid)/\(s.path)"]?.crc32 == s.crc32, "\(grid)/\(s.path)") }
                let sources = "t/\(grid)/generations/1.sources.json"
                #expect(a[sources] != nil && a[sources]?.crc32 == b[sources]?.crc32)
            }
        }

        /// Plans into the bucket, as `dallage tile … --plan-out` does, and reads the plan back.
        static func plan(
            _ sources: [String], store: String, file: String, staging: String, environment: [String: String]
        ) throws -> ClusterPlan {
            var options = TileOptions(store: store, tmsDirectory: Fixture.tmsDirectory)
            options.environment = environment
            options.staging = staging
            let made = try Tiler(
                definition: ClusterTests.definition(sources), options: options, logger: ClusterTests.quietLogger()
            ).makePlan()
            try made.plan.write(to: file)
            return try ClusterPlan.load(path: file)
        }

        /// Runs a worker or the finisher of `plan` in this process (on a Dispatch thread).
        static func run(
            _ plan: ClusterPlan, _ role: ClusterRun.Role, staging: String, environment: [String: String]
        ) async throws -> TilingSummary {
            try await Blocking.run {
                var options = TileOptions(store: plan.store, tmsDirectory: Fixture.tmsDirectory)
                options.threads = 2
                options.environment = environment
                options.staging = staging
                options.cluster = ClusterRun(plan: plan, role: role)
                let logger = ClusterTests.quietLogger()
                return try Tiler(
                    definition: plan.tileset, options: options, logger: logger,
                    progress: Progress(logger: logger, interactive: false)
                ).run()
            }
        }

        @Test func threeWorkersAndAFinisherMakeTheOneProcessPyramidInABucket() async throws {
            let dir = Fixture.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sources = try GenerationTests.fourShards(in: dir)
            let environment = try server.environment
            let one = try await Self.oneProcess(sources, in: dir, environment: environment)
            let (url, prefix) = Self.store()
            let staging = dir + "/staging"
            let plan = try Self.plan(
                sources, store: url, file: dir + "/plan.json", staging: staging, environment: environment)
            #expect(plan.store == url)
            #expect(plan.endpoint == environment["AWS_ENDPOINT_URL"])
            #expect(plan.grids.map(\.jobs.count) == [4, 4])
            // Planning reads the bucket, writes nothing there.
            #expect(try await objects(under: prefix).isEmpty)

            // The finisher before any worker: refused, saying how many shards are missing; nothing written.
            await #expect {
                try await Self.run(plan, .finish, staging: staging, environment: environment)
            } throws: { "\($0)".contains("8 shard(s) of the deepest band are not built yet") }
            #expect(try await objects(under: prefix).isEmpty)

            // Three workers, one after the other, all with the same staging root (as on one host).
            var built: [Int] = []
            for i in 0..<3 {
                let summary = try await Self.run(
                    plan, .worker(try WorkerShare(index: i, count: 3)), staging: staging, environment: environment)
                built.append(summary.grids.reduce(0) { $0 + $1.shardsBuilt })
                #expect(summary.grids.flatMap(\.failed).isEmpty)
            }
            #expect(built.reduce(0, +) == 8 && built.allSatisfy { $0 > 0 })
            let landed = try await objects(under: prefix)
            for g in plan.grids {
                let records = landed.keys.filter { $0.hasPrefix("t/\(g.tileMatrixSet.id)/done/") }
                #expect(records.count == g.jobs.count)
            }
            #expect(!landed.keys.contains { $0.hasSuffix("pyramid.json") })
            // Each worker's own staging folder is gone once its shards are uploaded.
            let staged = (try? FileManager.default.contentsOfDirectory(atPath: staging + "/dallage-staging")) ?? []
            #expect(!staged.contains { $0.hasPrefix(".worker-") }, "\(staged)")

            // A worker run again (retried by the scheduler): not an object rewritten.
            try await Self.afterTheNextSecond()
            let again = try await Self.run(
                plan, .worker(try WorkerShare(index: 1, count: 3)), staging: staging, environment: environment)
            #expect(again.grids.reduce(0) { $0 + $1.shardsBuilt } == 0)
            #expect(try await objects(under: prefix) == landed)

            let finished = try await Self.run(plan, .finish, staging: staging, environment: environment)
            #expect(finished.grids.map(\.generation) == [1, 1])
            try await expectTheOneProcessPyramid(prefix, one)

            // After the finish, a late worker or a second finisher: nothing to do, nothing touched.
            let done = try await objects(under: prefix)
            try await Self.afterTheNextSecond()
            _ = try await Self.run(
                plan, .worker(try WorkerShare(index: 2, count: 3)), staging: staging, environment: environment)
            _ = try await Self.run(plan, .finish, staging: staging, environment: environment)
            #expect(try await objects(under: prefix) == done)
        }

        @Test func twoCopiesOfOneWorkerOnOneHostChangeNothing() async throws {
            // A scheduler may start a task twice (a requeue while the first still runs): on one host
            // (one staging folder) the second waits for the first, then finds its share recorded.
            let dir = Fixture.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let environment = try server.environment
            let (one, prefix, staging) = try await planAndOneProcess(in: dir)
            let worker = ["tile", "--plan", dir + "/plan.json", "--worker", "0/2"] + staging
            async let first = TestSupport.run(Fixture.executable, worker, environment: environment)
            async let second = TestSupport.run(Fixture.executable, worker, environment: environment)
            let outputs = try await [first, second]
            #expect(outputs.allSatisfy { $0.contains("worker 0/2 of plan") })
            // One of them built the share, the other found it done.
            #expect(outputs.contains { $0.contains(" 0 built, ") }, "\(outputs)")
            for role in [["--worker", "1/2"], ["--finish"]] {
                _ = try await TestSupport.run(
                    Fixture.executable, ["tile", "--plan", dir + "/plan.json"] + role + staging,
                    environment: environment)
            }
            try await expectTheOneProcessPyramid(prefix, one)
        }

        @Test func dallesInTheBucketTileOnAClusterAsInOneProcess() async throws {
            let dir = Fixture.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let local = try GenerationTests.fourShards(in: dir)
            let folder = "cluster-dalles-\(UUID().uuidString.prefix(8).lowercased())"
            try await S3Client.withClient(configuration: try server.configuration) { client in
                for (i, path) in local.enumerated() {
                    try await client.bucket(SeaweedFS.bucketName).upload(
                        file: path, to: "\(folder)/\(i)/\((path as NSString).lastPathComponent)")
                }
            }
            let sources = ["s3://\(SeaweedFS.bucketName)/\(folder)/"]
            let environment = try server.environment
            let one = try await Self.oneProcess(sources, in: dir, environment: environment)
            let (url, prefix) = Self.store()
            let staging = dir + "/staging"
            let plan = try await Blocking.run {
                try Self.plan(sources, store: url, file: dir + "/plan.json", staging: staging, environment: environment)
            }
            #expect(plan.sources.dalles.count == 4 && plan.sources.dalles.allSatisfy { $0.path.hasPrefix("/vsis3/") })
            for i in 0..<2 {
                let summary = try await Self.run(
                    plan, .worker(try WorkerShare(index: i, count: 2)), staging: staging, environment: environment)
                #expect(summary.skipped.isEmpty && summary.grids.flatMap(\.failed).isEmpty)
            }
            _ = try await Self.run(plan, .finish, staging: staging, environment: environment)
            try await expectTheOneProcessPyramid(prefix, one)
        }

        @Test func aTrancheOnABucketRebuildsWhatOneProcessRebuilds() async throws {
            // Generation 1 in two stores alike, then a dalle added: one process and the cluster
            // make the same generation 2 (workers and finisher fetch the previous versions of the
            // shards they rebuild, the finisher the coarse levels of the reused ones).
            let dir = Fixture.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let first = try GenerationTests.fourShards(in: dir)
            let added = try GenerationTests.neighbour(in: dir)
            let environment = try server.environment
            let (oneURL, one) = Self.store()
            let (url, prefix) = Self.store()
            let staging = dir + "/staging"
            for (sources, store) in [(first, oneURL), (first, url), (first + added, oneURL)] {
                _ = try await Blocking.run {
                    try Fixture.tile(sources, store: store, grids: ClusterTests.grids) { options in
                        options.environment = environment
                        options.staging = staging
                    }
                }
            }
            let plan = try await Blocking.run {
                try Self.plan(
                    first + added, store: url, file: dir + "/plan.json", staging: staging, environment: environment)
            }
            #expect(plan.grids.map(\.base) == [1, 1] && plan.grids.map(\.generation) == [2, 2])
            #expect(plan.grids.map(\.jobs.count) == [1, 1] && plan.grids.map(\.reused) == [3, 3])
            for i in 0..<2 {
                _ = try await Self.run(
                    plan, .worker(try WorkerShare(index: i, count: 2)), staging: staging, environment: environment)
            }
            let finished = try await Self.run(plan, .finish, staging: staging, environment: environment)
            #expect(finished.grids.map(\.generation) == [2, 2])
            #expect(finished.grids.allSatisfy { $0.tilesCopied > 0 })
            try await expectTheOneProcessPyramid(prefix, one)
        }

        @Test func aWorkerKilledMidwayLeavesWholeObjectsAndItsRerunBuildsOnlyTheRest() async throws {
            let dir = Fixture.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // Eight shards of 2048×2048 px dalles, built one at a time: a worker long enough to kill.
            let sources = try (0..<8).flatMap { i in
                let origin = (704_000 + Double(i % 4) * 2000, 7_060_000 - Double(i / 4) * 2000)
                return try Fixture.sample(
                    in: dir + "/src\(i)", columns: 1, rows: 1, dalleSize: 102.4, origin: origin)
            }
            let environment = try server.environment
            let (oneURL, one) = Self.store()
            let (url, prefix) = Self.store()
            let common = ["--tms-dir", Fixture.tmsDirectory, "--staging", dir + "/staging"]
            _ = try await TestSupport.run(
                Fixture.executable,
                ["tile", "--id", "t", "--tms", "2154_5cm", "--tms", "PM", "--store", oneURL] + common + sources,
                environment: environment)
            let planFile = dir + "/plan.json"
            _ = try await TestSupport.run(
                Fixture.executable,
                ["tile", "--id", "t", "--tms", "2154_5cm", "--tms", "PM", "--store", url, "--plan-out", planFile]
                    + common + sources, environment: environment)
            let plan = try ClusterPlan.load(path: planFile)
            let reference = try await objects(under: one)

            // One worker for the whole plan, killed with SIGKILL once its first record is in the
            // bucket; tried again if the machine is so loaded that it finished first.
            var recordsAtKill = 0
            for _ in 0..<3 {
                let worker = try ChildProcess(
                    Fixture.executable,
                    ["tile", "--plan", planFile, "--worker", "0/1", "--threads", "1"] + common.suffix(2),
                    environment: environment, log: dir + "/worker.log")
                try await S3Client.withClient(configuration: try server.configuration) { client in
                    let bucket = client.bucket(SeaweedFS.bucketName)
                    try await eventually("a record of the worker in the bucket", timeout: .seconds(300)) {
                        for grid in ClusterTests.grids {
                            if try await !bucket.list(prefix: "\(prefix)/t/\(grid)/done/").isEmpty { return true }
                        }
                        return false
                    }
                }
                worker.kill()
                let landed = try await objects(under: prefix)
                recordsAtKill = landed.keys.filter { $0.contains("/done/") }.count
                // Every object under a shard's name is a whole shard, byte for byte the one-process one.
                for (key, o) in landed where key.contains("/shards/") {
                    #expect(reference[key]?.crc32 == o.crc32, "\(key) is not a whole shard")
                }
                if recordsAtKill < plan.jobCount { break }
                try await S3Client.withClient(configuration: try server.configuration) { client in
                    for key in landed.keys { try await client.bucket(SeaweedFS.bucketName).delete(prefix + "/" + key) }
                }
            }
            try #require(
                recordsAtKill >= 1 && recordsAtKill < plan.jobCount,
                "no worker could be killed midway (\(recordsAtKill) of \(plan.jobCount) shards)")

            // Run again, it builds only what was not recorded and leaves the rest as it was.
            let before = try await objects(under: prefix)
            try await Self.afterTheNextSecond()
            let output = try await TestSupport.run(
                Fixture.executable, ["tile", "--plan", planFile, "--worker", "0/1"] + common.suffix(2),
                environment: environment)
            let rebuilt = plan.jobCount - recordsAtKill
            #expect(output.contains("\(rebuilt) built, \(recordsAtKill) done before, 0 failed"), "\(output)")
            let after = try await objects(under: prefix)
            for (key, o) in before where key.contains("/done/") {
                #expect(after[key] == o, "\(key) was rewritten")
                let shard = key.replacingOccurrences(of: "/done/", with: "/shards/")
                for (k, s) in before where k.hasPrefix(String(shard.dropLast(5))) {
                    #expect(after[k] == s, "\(k) was rewritten")
                }
            }
            _ = try await TestSupport.run(
                Fixture.executable, ["tile", "--plan", planFile, "--finish"] + common.suffix(2),
                environment: environment)
            try await expectTheOneProcessPyramid(prefix, one)
        }

        @Test func badInputIsRefusedWithNothingWrittenToTheBucket() async throws {
            let dir = Fixture.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sources = try GenerationTests.fourShards(in: dir)
            let environment = try server.environment
            let (url, prefix) = Self.store()
            let planFile = dir + "/plan.json"
            let staging = ["--staging", dir + "/staging"]
            _ = try await TestSupport.run(
                Fixture.executable,
                [
                    "tile", "--id", "t", "--tms", "2154_5cm", "--tms", "PM", "--store", url, "--plan-out", planFile,
                    "--tms-dir", Fixture.tmsDirectory,
                ] + staging + sources,
                environment: environment)
            let plan = try ClusterPlan.load(path: planFile)
            #expect(plan.store == url)

            var https = environment
            https["AWS_ENDPOINT_URL"] = "https://127.0.0.1:\(try server.httpsPort)"
            https["AWS_CA_BUNDLE"] = try server.caBundle
            let cases: [([String], [String: String], String)] = [
                (["--worker", "0/2", "--quality", "50"], environment, "differ from plan"),
                (["--worker", "0/2", "--tms", "2154_5cm"], environment, "differ from plan"),
                (
                    ["--worker", "0/2", "--id", "t", "--tms", "2154_5cm", "--tms", "PM"] + sources.dropLast(),
                    environment, "differ from plan \(plan.id)'s in sources"
                ),
                (["--finish", "--store", dir + "/folder"], environment, "is not the plan's store"),
                (["--worker", "0/2", "--store", url + "-other"], environment, "is not the plan's store"),
                (["--worker", "2/2"], environment, "worker index 2 is out of range for 2 worker(s)"),
                (
                    ["--worker", "auto", "--workers", "3"],
                    environment.merging([
                        "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2",
                    ]) { $1 },
                    "--workers 3 disagrees with the Slurm array's 2 task(s)"
                ),
                (
                    ["--finish"], environment,
                    "cannot finish plan \(plan.id): 8 shard(s) of the deepest band are not built yet"
                ),
                (["--worker", "0/2"], https, "and this run reaches https://127.0.0.1:"),
            ]
            for (arguments, env, message) in cases {
                await #expect {
                    _ = try await TestSupport.run(
                        Fixture.executable, ["tile", "--plan", planFile] + arguments + staging, environment: env)
                } throws: { "\($0)".contains(message) }
                #expect(try await objects(under: prefix).isEmpty, "\(arguments)")
            }

            // Another build switched the pyramid since the plan: refused, the bucket left as that build made it.
            _ = try await TestSupport.run(
                Fixture.executable,
                [
                    "tile", "--id", "t", "--tms", "2154_5cm", "--tms", "PM", "--store", url, "--tms-dir",
                    Fixture.tmsDirectory,
                ] + staging + Array(sources.dropLast()),
                environment: environment)
            let switched = try await objects(under: prefix)
            #expect(switched.keys.contains("t/PM/pyramid.json"))
            for role in [["--worker", "0/2"], ["--finish"]] {
                await #expect {
                    _ = try await TestSupport.run(
                        Fixture.executable, ["tile", "--plan", planFile] + role + staging, environment: environment)
                } throws: { "\($0)".contains("another build switched it since the plan was made") }
            }
            #expect(try await objects(under: prefix) == switched)

            // A dalle rewritten since the plan: workers would mix two states of the sources.
            try FileManager.default.setAttributes(
                [.modificationDate: Date(timeIntervalSinceNow: 60)], ofItemAtPath: sources[1])
            for role in [["--worker", "0/2"], ["--finish"]] {
                await #expect {
                    _ = try await TestSupport.run(
                        Fixture.executable, ["tile", "--plan", planFile] + role + staging, environment: environment)
                } throws: { "\($0)".contains("1 source dalle(s) changed on disk since plan \(plan.id)") }
            }
            #expect(try await objects(under: prefix) == switched)
        }
    }
}
