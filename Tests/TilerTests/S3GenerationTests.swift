import Foundation
import GeoGrid
import NIOCore
import Pyramid
import Raster
import S3
import TestSupport
import Testing
import Tiler

/// `dallage rollback`, `gc`, `projects` and `extract` on a store in a bucket (issue 15), as a user
/// runs them, checked with boto3 and by reading the tiles back.
@Suite(.seaweedFS, .serialized, .blocking)
struct S3GenerationTests {
    let tiling = S3TilingTests()

    /// Keys under `prefix/` (relative to it), as boto3 lists them.
    func keys(under prefix: String) async throws -> Set<String> {
        let server = try #require(SeaweedFS.current)
        let out = try await server.boto3(
            """
            p = s3.get_paginator("list_objects_v2")
            for page in p.paginate(Bucket=bucket, Prefix=sys.argv[1] + "/"):
                for o in page.get("Contents", []): print(o["Key"][len(sys.argv[1]) + 1:])
            """, arguments: [prefix])
        return Set(out.split(separator: "\n").map(String.init))
    }

    /// An object's bytes as boto3 reads them.
    func object(_ key: String) async throws -> String {
        let server = try #require(SeaweedFS.current)
        return try await server.boto3(
            "sys.stdout.write(s3.get_object(Bucket=bucket, Key=sys.argv[1])['Body'].read().decode())",
            arguments: [key])
    }

    @Test func rollbackAndGCInABucketDoWhatTheyDoInAFolder() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try GenerationTests.fourShards(in: dir)
        let added = try GenerationTests.neighbour(in: dir)
        let (url, prefix) = S3TilingTests.store()
        let pyramid = "\(prefix)/t/2154_5cm"
        let target = "\(url)/t/2154_5cm"
        let environment = try #require(SeaweedFS.current).environment
        let staging = dir + "/staging"
        func export(_ name: String) async throws -> [String: String] {
            let (status, _, err) = try await tiling.dallageOutput(
                ["export", target, "--out", dir + "/" + name], environment: environment)
            #expect(status == 0, "\(err)")
            return try S3TilingTests.tree(dir + "/" + name)
        }
        _ = try await tiling.tile(first, store: url, staging: staging)
        let v1 = try await export("v1")
        let footprint1 = try await object(pyramid + "/footprint.json")
        _ = try await tiling.tile(first + added, store: url, staging: staging)
        let g2 = try await tiling.manifest(pyramid)
        #expect(g2.generation == 2)
        #expect(try await export("v2") != v1)

        // A server on the bucket, serving generation 2: a tile the added dalle changed.
        let v2 = try S3TilingTests.tree(dir + "/v2")
        let changed = try #require(v2.keys.sorted().first { v1[$0] != v2[$0] })
        let port = try freePorts(1)[0]
        let serverLog = dir + "/serve.log"
        let serve = try ChildProcess(
            Fixture.executable,
            ["serve", "--store", url, "--port", "\(port)", "--tms-dir", Fixture.tmsDirectory],
            environment: environment.merging([
                "DALLAGE_DB": dir + "/serve.sqlite", "DALLAGE_EXTRACTS_DIR": dir + "/extracts", "AWS_CA_BUNDLE": "",
            ]) { $1 }, log: serverLog)
        defer { serve.kill() }
        let tileURL = "http://127.0.0.1:\(port)/tiles/t/2154_5cm/" + changed
        /// The served tile's CRC-32, nil when it is absent.
        func served() async throws -> String? {
            let file = dir + "/served-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: file) }
            let code = try await run("curl", ["-s", "-o", file, "-w", "%{http_code}", tileURL])
            guard code == "200" else { return code == "404" ? nil : "status \(code)" }
            return S3TilingTests.crc(try Data(contentsOf: URL(fileURLWithPath: file)))
        }
        try await eventually("the server to serve generation 2", timeout: .seconds(60), every: .milliseconds(100)) {
            (try? await served()) == v2[changed]
        }

        // Back to generation 1, as generation 3 listing its shards: its tiles and footprint again.
        let (s1, out1, err1) = try await tiling.dallageOutput(
            ["rollback", target, "1", "--staging", staging], environment: environment)
        #expect(s1 == 0, "\(err1)")
        #expect(out1.contains("generation 3 is current"), "\(out1)")
        let g3 = try await tiling.manifest(pyramid)
        let g1 = try JSONDecoder().decode(
            PyramidManifest.self, from: Data(try await object(pyramid + "/generations/1.json").utf8))
        #expect(g3.generation == 3 && g3.restores == 1)
        #expect(g3.shards == g1.shards)
        #expect(try await export("v3") == v1)
        #expect(try await object(pyramid + "/footprint.json") == footprint1)
        // The server moves to it at its next rescan (the manifest's ETag changed).
        try await eventually("the server to serve generation 1's tile again", timeout: .seconds(60)) {
            try await served() == v1[changed]
        }
        let stagingLeft = (try? FileManager.default.subpathsOfDirectory(atPath: staging)) ?? []
        #expect(stagingLeft.allSatisfy { !$0.hasSuffix(".tif") }, "\(stagingLeft)")

        // Within the grace period nothing goes; after it, generation 2's own shards and the records
        // of generations 1 and 2; what generation 3 lists stays, and serves the same tiles.
        let before = try await keys(under: pyramid)
        let (s2, out2, _) = try await tiling.dallageOutput(
            ["gc", target, "--keep", "1", "--grace", "1h", "--staging", staging], environment: environment)
        #expect(s2 == 0 && out2.contains("deleted 0 shard file(s)"), "\(out2)")
        #expect(try await keys(under: pyramid) == before)
        let (s3, out3, err3) = try await tiling.dallageOutput(
            ["gc", target, "--keep", "1", "--grace", "0", "--staging", staging], environment: environment)
        #expect(s3 == 0, "\(err3)")
        #expect(out3.contains("generations dropped: 1, 2"), "\(out3)")
        let after = try await keys(under: pyramid)
        #expect(after.filter { $0.hasPrefix("shards/") } == Set(g3.shards.map(\.path)))
        #expect(
            Set(after.filter { $0.hasPrefix("generations/") }) == ["generations/3.json", "generations/3.sources.json"])
        let onlyG2 = Set(g2.shards.map(\.path)).subtracting(g3.shards.map(\.path))
        #expect(!onlyG2.isEmpty && out3.contains("deleted \(onlyG2.count) shard file(s)"), "\(out3)")
        #expect(try await export("v4") == v1)
        #expect(try await served() == v1[changed], "\((try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? "")")

        // Rolling back to a collected generation: one line, nothing changed.
        let manifestBefore = try await object(pyramid + "/pyramid.json")
        let (s4, _, err4) = try await tiling.dallageOutput(
            ["rollback", target, "2", "--staging", staging], environment: environment)
        #expect(s4 != 0 && err4.contains("generation 2 of \(target) is not kept"), "\(err4)")
        #expect(err4.split(separator: "\n").count == 1, "\(err4)")
        #expect(try await object(pyramid + "/pyramid.json") == manifestBefore)
    }

    /// The coverage commands and `dallage extract` on a store in a bucket: an explicit database is
    /// required (as for the server); with one, deliverables and tiled progress read the bucket.
    @Test func coverageCommandsAndExtractReadAStoreInABucket() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 1, rows: 1, origin: (704_000, 7_060_000))
        let (url, _) = S3TilingTests.store()
        _ = try await tiling.tile(sources, store: url, staging: dir + "/staging")
        let environment = try #require(SeaweedFS.current).environment

        let (s0, _, err0) = try await tiling.dallageOutput(
            ["projects", "list", "--store", url], environment: environment)
        #expect(s0 != 0 && err0.contains("an s3:// store needs an explicit database"), "\(err0)")

        let db = dir + "/coverage.sqlite"
        let area = try Geometry.rectangle(
            BoundingBox(minX: 704_000, minY: 7_059_974.4, maxX: 704_025.6, maxY: 7_060_000)
        )
        .transformed(CoordinateTransform(from: SpatialReference(epsg: 2154), to: SpatialReference.wgs84()))
        .geoJSON(precision: 10)
        for (name, tileset) in [("A", "t"), ("B", "nope")] {
            try """
            {"nom":"\(name)","geometrie":\(area),"etapes":[{"statut":"disponible","date_debut":"2024-01-01"}],
             "livrables":[{"nom":"Ortho","tileset":"\(tileset)"}]}
            """.write(toFile: dir + "/\(name).json", atomically: true, encoding: .utf8)
        }
        let (s1, out1, err1) = try await tiling.dallageOutput(
            ["projects", "create", dir + "/A.json", "--store", url, "--db", db], environment: environment)
        #expect(s1 == 0 && out1.contains("created project 1"), "\(out1) \(err1)")
        // A deliverable naming a tileset the bucket's store does not have is refused.
        let (s2, _, err2) = try await tiling.dallageOutput(
            ["projects", "create", dir + "/B.json", "--store", url, "--db", db], environment: environment)
        #expect(s2 != 0 && err2.contains("nope"), "\(err2)")
        // Tiled progress from the footprint in the bucket.
        let (s3, shown, _) = try await tiling.dallageOutput(
            ["projects", "show", "1", "--store", url, "--db", db], environment: environment)
        #expect(s3 == 0)
        let document = try JSONSerialization.jsonObject(with: Data(shown.utf8)) as? [String: Any]
        let progress = try #require((document?["avancement"] as? [[String: Any]])?.first, "\(shown)")
        let fraction = try #require(progress["part_tuilee"] as? Double)
        #expect(fraction > 0.9, "\(shown)")

        // An extract of the bucket's pyramid equals one of the same pyramid tiled to a folder.
        _ = try await Blocking.run { try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"]) }
        let geometry = dir + "/area.geojson"
        try area.write(toFile: geometry, atomically: true, encoding: .utf8)
        for (store, out) in [(url, "bucket.tif"), (dir + "/store", "folder.tif")] {
            let (status, _, err) = try await tiling.dallageOutput(
                [
                    "extract", "--tileset", "t", "--geometry", geometry, "--resolution", "0.1", "--out",
                    dir + "/" + out,
                    "--store", store, "--db", db,
                ], environment: environment)
            #expect(status == 0, "\(err)")
        }
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/bucket.tif"))
        let b = try Data(contentsOf: URL(fileURLWithPath: dir + "/folder.tif"))
        #expect(a.count > 1000 && a == b)
    }

}
