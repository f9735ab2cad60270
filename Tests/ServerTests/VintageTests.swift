import Foundation
import GeoGrid
import Hummingbird
import HummingbirdTesting
import Logging
import Pyramid
import Raster
import Server
import TestSupport
import Testing
import Tiler

@testable import Serving

/// Issue 14: tilesets sharing a `layer:` are its vintages, served one by one (WMTS `Time`, WMS
/// `TIME`, OGC API `datetime`) and stacked (`latest`: the newest published vintage with data).
///
/// The store: `hdf-2021` covers the 2×2 dalles of the small sample down to z20 only (a "20 cm"
/// vintage); `hdf-2024` is the top-left dalle again, colours inverted, down to z22; `hdf-2025`
/// is that dalle darkened, gated by publication and published nowhere.
@Suite struct VintageTests {
    static let admin: HTTPFields = [.authorization: "Token s3cret"]
    /// Wholly inside the top-left dalle (the 2024 vintage).
    static let inNew = TileCoordinate(z: 22, col: 55_000, row: 385_938)
    /// In the top-right dalle: the 2021 vintage only, upsampled from z20.
    static let oldOnly = TileCoordinate(z: 22, col: 55_002, row: 385_938)
    /// Across the bottom edge of the top-left dalle: rows 0…127 in 2024, 128…255 in 2021 only.
    static let straddling = TileCoordinate(z: 22, col: 55_000, row: 385_939)

    /// Built once, on `Blocking.queue`: the tests await it (suspended) rather than wait on a
    /// lazy global's lock, which would hold every cooperative thread — and with them every other
    /// suite's servers and clients — for the whole build.
    static let building = Task<(dir: String, sources: [String]), Error> { try await Blocking.run { try build() } }
    static func shared() async throws -> (dir: String, sources: [String]) { try await building.value }
    static func store() async throws -> String { try await shared().dir + "/store" }

    static func tile(_ definition: TilesetDefinition, store: String) throws {
        var options = TileOptions(store: store, tmsDirectory: ServerFixture.root + "/config/tms")
        options.threads = 2
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        _ = try Tiler(
            definition: definition, options: options, logger: logger,
            progress: Progress(logger: logger, interactive: false)
        ).run()
    }

    /// A copy of a dalle with its colours mapped by `gdal_translate -scale 0 255 a b`.
    static func recoloured(_ path: String, to out: String, _ a: Int, _ b: Int) throws {
        try Dataset.open(path).translate(
            to: out, arguments: ["-of", "GTiff", "-scale", "0", "255", "\(a)", "\(b)", "-co", "TILED=YES"]
        ).close()
    }

    static func build() throws -> (String, [String]) {
        let dir = NSTemporaryDirectory() + "dallage-vintages-\(UUID().uuidString)"
        let sources = try SampleData.small.write(to: dir + "/src").sorted()
        // The top-left dalle: the smallest x, the largest y (names carry both).
        var corners: [(x: Double, y: Double, path: String)] = []
        for s in sources {
            guard let g = try Dataset.open(s).geoTransform else { throw RasterError("\(s) has no georeferencing") }
            corners.append((g.originX, g.originY, s))
        }
        let topLeft = corners.min { ($0.x, -$0.y) < ($1.x, -$1.y) }!.path
        try FileManager.default.createDirectory(atPath: dir + "/v2024", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/v2025", withIntermediateDirectories: true)
        try recoloured(topLeft, to: dir + "/v2024/inverted.tif", 255, 0)
        try recoloured(topLeft, to: dir + "/v2025/dark.tif", 0, 60)
        let store = dir + "/store"
        try tile(
            TilesetDefinition(
                id: "hdf-2021", title: "PCRS HdF", sources: sources, grids: ["2154_5cm", "PM"], maxZoom: 20,
                layer: "hdf", vintage: Vintage("2021")), store: store)
        try tile(
            TilesetDefinition(
                id: "hdf-2024", title: "PCRS HdF", sources: [dir + "/v2024/inverted.tif"], grids: ["2154_5cm", "PM"],
                layer: "hdf", vintage: Vintage("2024-05")), store: store)
        try tile(
            TilesetDefinition(
                id: "hdf-2025", sources: [dir + "/v2025/dark.tif"], grids: ["2154_5cm"], publish: .byStatus,
                layer: "hdf", vintage: Vintage("2025-03-02")), store: store)
        return (dir, sources)
    }

    static func app() async throws -> some ApplicationProtocol {
        try ServerFixture.app(store: try await store()) { $0.adminTokens = ["s3cret"] }
    }

    static func pixels(_ jpeg: ByteBuffer) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 256 * 256 * 4)
        let bytes = Array(buffer: jpeg)
        try out.withUnsafeMutableBufferPointer { p in
            try bytes.withUnsafeBytes {
                try JPEGCodec().decode($0, into: p.baseAddress!, width: 256, height: 256, stride: 1024)
            }
        }
        return out
    }

    /// Mean absolute difference of the RGB of rows `rows` of two RGBA tiles.
    static func difference(_ a: [UInt8], _ b: [UInt8], rows: Range<Int> = 0..<256) -> Double {
        var sum = 0
        for y in rows {
            for x in 0..<256 {
                for k in 0..<3 { sum += abs(Int(a[(y * 256 + x) * 4 + k]) - Int(b[(y * 256 + x) * 4 + k])) }
            }
        }
        return Double(sum) / Double(rows.count * 256 * 3)
    }

    static func reader(_ tileset: String, _ grid: String = "2154_5cm") async throws -> PyramidReader {
        try PyramidReader(directory: try await store() + "/\(tileset)/\(grid)")
    }

    /// The 2021 vintage's pixels at a z22 tile: its z20 tile, the right 64×64 corner, ×4 (nearest).
    static func upsampled2021(_ t: TileCoordinate) async throws -> [UInt8] {
        let parent = try #require(try await reader("hdf-2021").decodeTile(t.ancestor(levels: 2)))
        var out = [UInt8](repeating: 0, count: 256 * 256 * 4)
        let (x0, y0) = ((t.col & 3) * 64, (t.row & 3) * 64)
        for y in 0..<256 {
            for x in 0..<256 {
                for k in 0..<4 { out[(y * 256 + x) * 4 + k] = parent[((y0 + y / 4) * 256 + x0 + x / 4) * 4 + k] }
            }
        }
        return out
    }

    static func path(_ layer: String, _ t: TileCoordinate, time: String? = nil) -> String {
        "/wmts/1.0.0/\(layer)/normal/\(time.map { "\($0)/" } ?? "")2154_5cm/\(t.z)/\(t.row)/\(t.col).jpg"
    }

    // MARK: - Rules

    @Test func vintagesAreISO8601AndOrderedByTheirFirstDay() throws {
        for bad in ["24", "2024-13", "2024-02-30", "May 2024", "2024/05", "2024-5", "20240517", ""] {
            #expect(Vintage(bad) == nil, "\(bad)")
        }
        let sorted = ["2024-05-17", "2021", "2024", "2024-05", "2023-12-31"].compactMap(Vintage.init).sorted()
        #expect(sorted.map(\.text) == ["2021", "2023-12-31", "2024", "2024-05", "2024-05-17"])
        #expect(Vintage("2024-02-29") != nil && Vintage("2023-02-29") == nil)
        // A tileset file with a vintage that is not a date is refused, naming it.
        let yaml = NSTemporaryDirectory() + "vintage-\(UUID().uuidString).yaml"
        try "id: a\nsources: [x.tif]\nlayer: hdf\nvintage: printemps 2024\n".write(
            toFile: yaml, atomically: true, encoding: .utf8)
        #expect(throws: TilerError.self) { try TilesetDefinition.load(path: yaml) }
        do { _ = try TilesetDefinition.load(path: yaml) } catch { #expect("\(error)".contains("printemps 2024")) }
    }

    @Test func theTilerRefusesAClashingLayerOrVintageBeforeWritingAnything() async throws {
        let sources = [try await Self.shared().sources[0]]
        let store = try await Self.store()
        let cases: [(TilesetDefinition, String)] = [
            // The same layer and vintage as hdf-2021.
            (
                TilesetDefinition(id: "hdf-bis", sources: sources, layer: "hdf", vintage: Vintage("2021")),
                "already vintage 2021"
            ),
            // A layer named like a tileset of the store.
            (
                TilesetDefinition(id: "x-2022", sources: sources, layer: "hdf-2021", vintage: Vintage("2022")),
                "tileset 'hdf-2021'"
            ),
            // A tileset named like a layer of the store.
            (TilesetDefinition(id: "hdf", sources: sources), "is the layer of tileset"),
            // A layer named like its own tileset.
            (TilesetDefinition(id: "solo", sources: sources, layer: "solo", vintage: Vintage("2022")), "own"),
        ]
        for (definition, message) in cases {
            #expect {
                try Self.tile(definition, store: store)
            } throws: { error in
                "\(error)".contains(message)
            }
            #expect(!FileManager.default.fileExists(atPath: store + "/\(definition.id)"), "\(definition.id)")
        }
    }

    @Test func aCatalogWithTwoTilesetsClaimingOneVintageServesThemButNotTheLayer() async throws {
        let store = try await Self.store()
        let dir = NSTemporaryDirectory() + "dallage-vintage-clash-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for t in ["hdf-2021", "hdf-2024"] {
            try FileManager.default.copyItem(atPath: store + "/" + t, toPath: dir + "/" + t)
        }
        // Written by hand (the tiler refuses it): hdf-2024 claims 2021 too.
        var m = try PyramidManifest.load(directory: dir + "/hdf-2024/2154_5cm")
        m.vintage = Vintage("2021")
        try m.save(directory: dir + "/hdf-2024/2154_5cm")
        try FileManager.default.removeItem(atPath: dir + "/hdf-2024/PM")
        let catalog = PyramidCatalog(store: FolderStore(dir), logger: Logger(label: "test"))
        #expect(catalog.layers["hdf"] == nil)
        #expect(catalog.tilesets == ["hdf-2021", "hdf-2024"])
    }

    // MARK: - Tiles

    @Test func theStackedViewShowsTheNewestVintageWhereItHasDataAndTheOlderElsewhere() async throws {
        try await Self.app().test(.router) { client in
            // Wholly in the 2024 vintage: its stored bytes and ETag, as the tileset itself serves them.
            let own = try await client.execute(uri: Self.path("hdf-2024", Self.inNew), method: .get) { $0 }
            #expect(own.status == .ok)
            for uri in [
                Self.path("hdf", Self.inNew), Self.path("hdf", Self.inNew, time: "latest"),
                "/tiles/hdf/2154_5cm/22/\(Self.inNew.col)/\(Self.inNew.row).jpg",
            ] {
                try await client.execute(uri: uri, method: .get) { r in
                    #expect(r.status == .ok, "\(uri)")
                    #expect(r.body == own.body, "\(uri)")
                    #expect(r.headers[.eTag] == own.headers[.eTag], "\(uri)")
                }
            }
            // Only the 2021 vintage there, and only down to z20: its pixels, upsampled.
            let old = try await Self.upsampled2021(Self.oldOnly)
            try await client.execute(uri: Self.path("hdf", Self.oldOnly), method: .get) { r in
                #expect(r.status == .ok)
                let px = try Self.pixels(r.body)
                #expect(Self.difference(px, old) < 6)
            }
            // Across the 2024 dalle's edge: the top half from 2024, the bottom half from 2021.
            let new = try #require(try await Self.reader("hdf-2024").decodeTile(Self.straddling))
            let under = try await Self.upsampled2021(Self.straddling)
            try await client.execute(uri: Self.path("hdf", Self.straddling), method: .get) { r in
                #expect(r.status == .ok)
                let px = try Self.pixels(r.body)
                #expect(Self.difference(px, new, rows: 0..<124) < 6)
                #expect(Self.difference(px, under, rows: 0..<124) > 30)
                #expect(Self.difference(px, under, rows: 132..<256) < 6)
                // Asked again: the composite is made once and kept (same bytes, same validator).
                try await client.execute(uri: Self.path("hdf", Self.straddling), method: .get) { again in
                    #expect(again.body == r.body && again.headers[.eTag] == r.headers[.eTag])
                }
            }
            // The z20 tile over the four dalles: the 2024 quarter inverted over 2021.
            let z20 = Self.inNew.ancestor(levels: 2)
            let z20old = try #require(try await Self.reader("hdf-2021").decodeTile(z20))
            let z20new = try #require(try await Self.reader("hdf-2024").decodeTile(z20))
            try await client.execute(uri: Self.path("hdf", z20), method: .get) { r in
                let px = try Self.pixels(r.body)
                var newer = 0
                var older = 0
                for i in stride(from: 0, to: px.count, by: 4) {
                    let close = { (b: [UInt8]) in (0..<3).allSatisfy { abs(Int(px[i + $0]) - Int(b[i + $0])) < 24 } }
                    if z20new[i + 3] == 255, close(z20new) { newer += 1 }
                    if z20new[i + 3] == 0, z20old[i + 3] == 255, close(z20old) { older += 1 }
                }
                let newCount = stride(from: 3, to: z20new.count, by: 4).count { z20new[$0] == 255 }
                let oldCount = stride(from: 3, to: z20new.count, by: 4).count { z20new[$0] == 0 && z20old[$0] == 255 }
                #expect(newCount > 1000 && newer > newCount * 9 / 10)
                #expect(oldCount > 1000 && older > oldCount * 9 / 10)
            }
        }
    }

    @Test func anUnpublishedVintageLetsTheOlderShowThroughExceptToAdministrators() async throws {
        try await Self.app().test(.router) { client in
            let published = try await client.execute(uri: Self.path("hdf-2024", Self.inNew), method: .get) { $0.body }
            let unpublished = try #require(try await Self.reader("hdf-2025").tileData(Self.inNew))
            try await client.execute(uri: Self.path("hdf", Self.inNew), method: .get) { r in
                #expect(r.body == published)
            }
            try await client.execute(uri: Self.path("hdf", Self.inNew), method: .get, headers: Self.admin) { r in
                #expect(Array(buffer: r.body) == unpublished)
                #expect(r.headers[.cacheControl] == "private, no-store")
            }
            // The gated vintage asked by name: nothing for anyone else.
            try await client.execute(uri: Self.path("hdf", Self.inNew, time: "2025-03-02"), method: .get) { r in
                #expect(r.status == .notFound)
            }
            // A project publishing the 2025 vintage (its deliverable names that tileset) over the
            // dalle: the stacked view now shows 2025 there, to everyone.
            let area = try Geometry.rectangle(
                BoundingBox(minX: 703_990, minY: 7_059_960, maxX: 704_040, maxY: 7_060_010)
            ).transformed(CoordinateTransform(from: SpatialReference(epsg: 2154), to: SpatialReference.wgs84()))
            let body = """
                {"nom":"Vol 2025","geometrie":\(try area.geoJSON(precision: 10)),"etapes":[{"statut":"disponible","date_debut":"2025-03-02"}],
                 "livrables":[{"nom":"Ortho 2025","tileset":"hdf-2025"}]}
                """
            let id = try await client.execute(
                uri: "/api/projects", method: .post,
                headers: [.authorization: "Token s3cret", .contentType: "application/json"],
                body: ByteBuffer(string: body)
            ) { r in
                #expect(r.status == .created, "\(String(buffer: r.body))")
                return (try JSONSerialization.jsonObject(with: Data(buffer: r.body)) as? [String: Any])?["id"] as? Int
                    ?? 0
            }
            try await client.execute(uri: Self.path("hdf", Self.inNew), method: .get) { r in
                #expect(Array(buffer: r.body) == unpublished)
            }
            // The 2024 vintage, not gated, is unchanged; the card's progress names the 2025 tileset.
            try await client.execute(uri: Self.path("hdf", Self.inNew, time: "2024-05"), method: .get) { r in
                #expect(r.body == published)
            }
            let card = try await client.execute(uri: "/api/projects/\(id)", method: .get) {
                try JSONSerialization.jsonObject(with: Data(buffer: $0.body)) as? [String: Any] ?? [:]
            }
            let progress = card["avancement"] as? [[String: Any]] ?? []
            #expect(progress.first?["tileset"] as? String == "hdf-2025", "\(card)")
        }
    }

    @Test func timeChoosesOneVintageInRESTAndKVPAndAnUnknownOneIsAnOWSError() async throws {
        let z20 = Self.inNew.ancestor(levels: 2)
        try await Self.app().test(.router) { client in
            let own2021 = try await client.execute(uri: Self.path("hdf-2021", z20), method: .get) { $0.body }
            let kvp =
                "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=hdf&STYLE=normal&FORMAT=image/jpeg&TILEMATRIXSET=2154_5cm&TILEMATRIX=20&TILEROW=\(z20.row)&TILECOL=\(z20.col)"
            for uri in [Self.path("hdf", z20, time: "2021"), kvp + "&Time=2021"] {
                try await client.execute(uri: uri, method: .get) { r in
                    #expect(r.status == .ok && r.body == own2021, "\(uri)")
                }
            }
            for uri in [
                Self.path("hdf", z20, time: "1999"), kvp + "&TIME=2024-06", Self.path("hdf-2021", z20, time: "2024-05"),
                kvp.replacingOccurrences(of: "LAYER=hdf", with: "LAYER=hdf-2021") + "&Time=2024-05",
            ] {
                try await client.execute(uri: uri, method: .get) { r in
                    #expect(r.status == .badRequest, "\(uri)")
                    let body = String(buffer: r.body)
                    #expect(
                        body.contains("exceptionCode=\"InvalidParameterValue\"") && body.contains("locator=\"Time\""),
                        "\(body)")
                }
            }
            // The capabilities: one layer per vintage, and the layer with its Time dimension.
            let caps = try await client.execute(uri: "/wmts?SERVICE=WMTS&REQUEST=GetCapabilities", method: .get) {
                String(buffer: $0.body)
            }
            for id in ["hdf", "hdf-2021", "hdf-2024", "hdf-2025"] {
                #expect(caps.contains("<ows:Identifier>\(id)</ows:Identifier>"))
            }
            #expect(caps.contains("<ows:Identifier>Time</ows:Identifier>"))
            #expect(caps.contains("<Default>latest</Default>"))
            #expect(
                caps.contains(
                    "<Value>latest</Value>\n        <Value>2025-03-02</Value>\n        <Value>2024-05</Value>\n        <Value>2021</Value>"
                ))
            #expect(
                caps.contains("/wmts/1.0.0/hdf/{Style}/{Time}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.jpg"))
        }
    }

    @Test func wmsTimeDrawsEachVintageAndAnUnknownTimeIsInvalidDimensionValue() async throws {
        // The top-left dalle, 25.6 m square, at 10 cm.
        let box = "704000,7059974.4,704025.6,7060000"
        let base =
            "/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=hdf&STYLES=&CRS=EPSG:2154&BBOX=\(box)&WIDTH=256&HEIGHT=256&FORMAT=image/jpeg"
        try await Self.app().test(.router) { client in
            var maps: [String: [UInt8]] = [:]
            for time in ["2021", "2024-05", "current", ""] {
                try await client.execute(uri: base + (time.isEmpty ? "" : "&TIME=\(time)"), method: .get) { r in
                    #expect(r.status == .ok, "\(time): \(String(buffer: r.body))")
                    maps[time] = try Self.pixels(r.body)
                }
            }
            let (old, new) = (try #require(maps["2021"]), try #require(maps["2024-05"]))
            // 2024 is 2021 inverted: far apart; the default is the stacked view, 2024 here.
            #expect(Self.difference(old, new) > 30)
            #expect(Self.difference(try #require(maps[""]), new) < 4)
            #expect(Self.difference(try #require(maps["current"]), new) < 4)
            var inverted = old
            for i in stride(from: 0, to: old.count, by: 4) { for k in 0..<3 { inverted[i + k] = 255 - old[i + k] } }
            #expect(Self.difference(inverted, new) < 12)
            try await client.execute(uri: base + "&TIME=2019", method: .get) { r in
                let body = String(buffer: r.body)
                #expect(body.contains("code=\"InvalidDimensionValue\""), "\(body)")
            }
            let caps = try await client.execute(uri: "/wms?SERVICE=WMS&REQUEST=GetCapabilities", method: .get) {
                String(buffer: $0.body)
            }
            #expect(
                caps.contains(
                    "<Dimension name=\"time\" units=\"ISO8601\" default=\"current\" current=\"1\" nearestValue=\"0\">2021,2024-05,2025-03-02</Dimension>"
                ))
        }
    }

    @Test func ogcDatetimePicksTheVintageCurrentAtAnInstant() async throws {
        let z20 = Self.inNew.ancestor(levels: 2)
        let tile = "/ogc/collections/hdf/map/tiles/2154_5cm/20/\(z20.row)/\(z20.col)?f=jpg"
        try await Self.app().test(.router) { client in
            let own2021 = try await client.execute(uri: Self.path("hdf-2021", z20), method: .get) { $0.body }
            let own2024 = try await client.execute(uri: Self.path("hdf-2024", z20), method: .get) { $0.body }
            for (instant, expected) in [
                ("2023-01-01", own2021), ("2024-05-01T00:00:00Z", own2024), ("2024-04-30T23:59:59Z", own2021),
                ("../2022-06", own2021),
            ] {
                try await client.execute(uri: tile + "&datetime=\(instant)", method: .get) { r in
                    #expect(r.status == .ok && r.body == expected, "\(instant)")
                }
            }
            try await client.execute(uri: tile + "&datetime=2020-12-31", method: .get) { r in
                #expect(r.status == .notFound)
            }
            try await client.execute(uri: tile + "&datetime=yesterday", method: .get) { r in
                #expect(r.status == .badRequest)
            }
            let collection = try await client.execute(uri: "/ogc/collections/hdf", method: .get) {
                try JSONSerialization.jsonObject(with: Data(buffer: $0.body)) as? [String: Any] ?? [:]
            }
            #expect(collection["vintages"] as? [String] == ["2025-03-02", "2024-05", "2021"])
        }
    }

    @Test func tileJSONOfTheLayerListsEachVintagesOwn() async throws {
        try await Self.app().test(.router) { client in
            let doc = try await client.execute(uri: "/tiles/hdf/PM/tilejson.json", method: .get) {
                try JSONSerialization.jsonObject(with: Data(buffer: $0.body)) as? [String: Any] ?? [:]
            }
            #expect((doc["tiles"] as? [String])?.first?.hasSuffix("/tiles/hdf/PM/{z}/{x}/{y}.jpg") == true)
            let vintages = doc["vintages"] as? [[String: Any]] ?? []
            #expect(vintages.compactMap { $0["vintage"] as? String } == ["2024-05", "2021"])
            let own = try await client.execute(uri: "/tiles/hdf-2021/PM/tilejson.json", method: .get) {
                try JSONSerialization.jsonObject(with: Data(buffer: $0.body)) as? [String: Any] ?? [:]
            }
            #expect(own["vintage"] as? String == "2021" && own["layer"] as? String == "hdf")
        }
    }

    /// GDAL's WMTS driver reads the layer's default (stacked) view through the capabilities; the
    /// fast lane answers the stacked tiles a vintage covers wholly, with that vintage's bytes.
    @Test func gdalReadsTheStackedViewAndTheFastLaneAnswersIt() async throws {
        try await Self.app().test(.live) { client in
            let base = "http://127.0.0.1:\(try #require(client.port))"
            // On PM (where the gated 2025 vintage has no pyramid), a tile 2024 covers wholly.
            let pm = try await Self.reader("hdf-2024", "PM")
            let limits = try #require(pm.manifest.limits(z: pm.manifest.maxZoom))
            var whole: TileCoordinate?
            for row in limits.minRow...limits.maxRow {
                for col in limits.minCol...limits.maxCol where whole == nil {
                    let t = TileCoordinate(z: limits.z, col: col, row: row)
                    if try pm.cover(t) == .full { whole = t }
                }
            }
            let t = try #require(whole)
            let before = try await ServerFixture.fastLaneCount(client)
            let own = try #require(try pm.tileData(t))
            let lane = try await client.execute(uri: "/tiles/hdf/PM/\(t.z)/\(t.col)/\(t.row).jpg", method: .get) {
                Array(buffer: $0.body)
            }
            #expect(lane == own)
            #expect(try await ServerFixture.fastLaneCount(client) == before + 1)
            // On 2154_5cm the newest vintage (2025) is gated and published nowhere: the lane knows
            // it shows nothing here and answers 2024's tile itself.
            let own2024 = try #require(try await Self.reader("hdf-2024").tileData(Self.inNew))
            let through = try await client.execute(uri: Self.path("hdf", Self.inNew), method: .get) {
                Array(buffer: $0.body)
            }
            #expect(through == own2024)
            #expect(try await ServerFixture.fastLaneCount(client) == before + 2)

            let out = NSTemporaryDirectory() + "wmts-hdf-\(UUID().uuidString).tif"
            let minX = 704_000.0
            let maxY = 12_000_000 - Double(Self.straddling.row) * 12.8
            let (status, log) = try await ServerFixture.run(
                "/usr/bin/gdal_translate",
                [
                    "--config", "GDAL_ENABLE_WMS_CACHE", "NO", "-q",
                    "WMTS:\(base)/wmts/1.0.0/WMTSCapabilities.xml,layer=hdf,tilematrixset=2154_5cm",
                    "-projwin", "\(minX)", "\(maxY)", "\(minX + 12.8)", "\(maxY - 12.8)", "-b", "1", "-b", "2", "-b",
                    "3",
                    out,
                ])
            #expect(status == 0, "\(log)")
            let ds = try Dataset.open(out)
            var px = [UInt8](repeating: 255, count: 256 * 256 * 4)
            try px.withUnsafeMutableBufferPointer { p in
                try ds.read(
                    x: 0, y: 0, width: 256, height: 256, bands: [1, 2, 3], into: p.baseAddress!, bufferWidth: 256,
                    bufferHeight: 256, pixelSpace: 4)
            }
            let new = try #require(try await Self.reader("hdf-2024").decodeTile(Self.straddling))
            #expect(Self.difference(px, new, rows: 0..<124) < 6)
            #expect(Self.difference(px, try await Self.upsampled2021(Self.straddling), rows: 132..<256) < 6)
        }
    }

    // MARK: - Extracts

    /// An extract names its vintage (default `latest`) and the file records it: GeoTIFF metadata,
    /// or a sidecar in the zip of a JPEG extract.
    @Test func anExtractRecordsTheVintageItShows() async throws {
        // Across the two top dalles (Lambert-93): 2024 on the left, 2021 only on the right.
        let polygon =
            #"{"type":"Polygon","crs":{"type":"name","properties":{"name":"EPSG:2154"}},"coordinates":[[[704010,7059980],[704040,7059980],[704040,7059995],[704010,7059995],[704010,7059980]]]}"#
        try await Self.app().test(.router) { client in
            var files: [String: Dataset] = [:]
            for vintage in ["2021", "2024-05", "latest", ""] {
                let extra = vintage.isEmpty ? "" : #","vintage":"\#(vintage)""#
                let body = #"{"tileset":"hdf","geometry":\#(polygon),"resolution":0.1\#(extra)}"#
                try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) { r in
                    #expect(r.status == .ok, "\(vintage): \(String(buffer: r.body))")
                    let path = NSTemporaryDirectory() + "extract-\(UUID().uuidString).tif"
                    try Data(buffer: r.body).write(to: URL(fileURLWithPath: path))
                    files[vintage] = try Dataset.open(path)
                }
            }
            #expect(files["2021"]?.metadataItem("VINTAGE") == "2021")
            #expect(files["2021"]?.metadataItem("LAYER") == "hdf")
            #expect(files["2021"]?.metadataItem("TILESET") == "hdf-2021")
            #expect(files["2024-05"]?.metadataItem("VINTAGE") == "2024-05")
            for v in ["latest", ""] {
                #expect(files[v]?.metadataItem("VINTAGE") == "latest")
                // The unpublished 2025 vintage is not shown to this client, so not named.
                #expect(files[v]?.metadataItem("VINTAGES") == "2024-05,2021")
            }
            // The stacked extract: 2024's pixels on the left, 2021's on the right.
            func rgb(_ ds: Dataset?) throws -> [UInt8] {
                let ds = try #require(ds)
                var px = [UInt8](repeating: 0, count: ds.width * ds.height * 4)
                try px.withUnsafeMutableBufferPointer { p in
                    try ds.read(
                        x: 0, y: 0, width: ds.width, height: ds.height, bands: [1, 2, 3], into: p.baseAddress!,
                        bufferWidth: ds.width, bufferHeight: ds.height, pixelSpace: 4)
                }
                return px
            }
            // (The 2024 extract is laid on that pyramid's tiles, another pixel grid: 2024 is 2021
            // inverted, so the inverted 2021 extract stands for it.)
            let (latest, old) = (try rgb(files["latest"]), try rgb(files["2021"]))
            var new = old
            for i in stride(from: 0, to: old.count, by: 4) { for k in 0..<3 { new[i + k] = 255 - old[i + k] } }
            let width = try #require(files["latest"]).width
            func mean(_ a: [UInt8], _ b: [UInt8], columns: Range<Int>) -> Double {
                var sum = 0
                var n = 0
                for y in 0..<(a.count / 4 / width) {
                    for x in columns {
                        for k in 0..<3 { sum += abs(Int(a[(y * width + x) * 4 + k]) - Int(b[(y * width + x) * 4 + k])) }
                        n += 3
                    }
                }
                return Double(sum) / Double(max(1, n))
            }
            // 15.6 m of 2024 then 14.4 m of 2021, at 10 cm.
            #expect(mean(latest, new, columns: 4..<150) < 14)
            #expect(mean(latest, old, columns: 4..<150) > 30)
            #expect(mean(latest, old, columns: 162..<296) < 10)

            let unknown = #"{"tileset":"hdf","geometry":\#(polygon),"vintage":"1999"}"#
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: unknown)) { r in
                #expect(r.status == .badRequest)
                #expect(String(buffer: r.body).contains("no vintage '1999'"))
            }
            // A JPEG extract is a zip: the vintage is in a text sidecar.
            let jpeg = #"{"tileset":"hdf","geometry":\#(polygon),"vintage":"2021","format":"jpeg"}"#
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: jpeg)) { r in
                #expect(r.status == .ok)
                let zip = NSTemporaryDirectory() + "extract-\(UUID().uuidString).zip"
                try Data(buffer: r.body).write(to: URL(fileURLWithPath: zip))
                let (code, listing) = try ServerFixture.runBlocking(
                    "/usr/bin/python3",
                    [
                        "-c",
                        "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); print(z.read('hdf-extract.txt').decode())",
                        zip,
                    ])
                #expect(code == 0, "\(listing)")
                #expect(listing.contains("VINTAGE=2021") && listing.contains("LAYER=hdf"))
            }
        }
    }

    // MARK: - Web map

    /// The web page's swipe compare in headless Chromium: left of the handle one vintage, right
    /// of it the other, each as it looks alone.
    @Test func theWebMapComparesTwoVintagesEitherSideOfTheHandle() async throws {
        try await Self.app().test(.live) { client in
            let port = try #require(client.port)
            let out = NSTemporaryDirectory() + "web-vintages-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            // The middle of the 2024 dalle, in WGS84.
            var (x, y) = ([704_012.8], [7_059_987.2])
            try CoordinateTransform(from: SpatialReference(epsg: 2154), to: SpatialReference.wgs84()).transform(
                x: &x, y: &y)
            let script = ServerFixture.root + "/Tests/ServerTests/Browser/check_vintages.py"
            let (status, log) = try await ServerFixture.run(
                "/usr/bin/env",
                ["python3", script, "http://127.0.0.1:\(port)", out, "hdf-2021", "hdf-2024", "\(x[0])", "\(y[0])"])
            #expect(status == 0, "\(log)")
            let line = try #require(log.split(separator: "\n").last.map(String.init))
            let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect((report["console"] as? [Any])?.isEmpty == true, "\(report)")
            #expect(report["choices"] as? [String] == ["Dernier (empilé)", "2024-05", "2021"], "\(report)")
            let rect = report["map"] as? [Double] ?? []
            let handle = report["handle"] as? Double ?? 0
            try #require(rect.count == 4)
            #expect(abs(handle - (rect[0] + rect[2] / 2)) < 3, "\(report)")
            func band(_ file: String, from x0: Double, to x1: Double) throws -> [UInt8] {
                let ds = try Dataset.open(out + "/" + file)
                let (w, h) = (Int(x1 - x0), Int(rect[3] * 0.4))
                var px = [UInt8](repeating: 0, count: w * h * 4)
                try px.withUnsafeMutableBufferPointer {
                    try ds.read(
                        x: Int(x0), y: Int(rect[1] + rect[3] * 0.3), width: w, height: h, bands: [1, 2, 3],
                        into: $0.baseAddress!, bufferWidth: w, bufferHeight: h, pixelSpace: 4)
                }
                return px
            }
            func mean(_ a: [UInt8], _ b: [UInt8]) -> Double {
                var sum = 0
                for i in stride(from: 0, to: a.count, by: 4) {
                    for k in 0..<3 { sum += abs(Int(a[i + k]) - Int(b[i + k])) }
                }
                return Double(sum) / Double(a.count / 4 * 3)
            }
            let leftSide = (rect[0] + rect[2] * 0.1, handle - 12)
            let rightSide = (handle + 12, rect[0] + rect[2] * 0.9)
            for (side, alone, other) in [
                (leftSide, "screen-left.png", "screen-right.png"), (rightSide, "screen-right.png", "screen-left.png"),
            ] {
                let shown = try band("screen-compare.png", from: side.0, to: side.1)
                #expect(mean(shown, try band(alone, from: side.0, to: side.1)) < 3, "\(alone)")
                #expect(mean(shown, try band(other, from: side.0, to: side.1)) > 30, "\(other)")
            }
        }
    }

    /// QGIS (headless, Debian's 3.22) renders the vintage chosen with `tileDimensions=Time=…`:
    /// each render is the WMS map of that vintage, far from the other's.
    @Test func qgisRendersTheVintageItsTileDimensionsChoose() async throws {
        try await Self.app().test(.live) { client in
            let base = "http://127.0.0.1:\(try #require(client.port))"
            let (minX, minY, maxX, maxY) = (704_000.0, 7_059_974.4, 704_025.6, 7_060_000.0)
            var renders: [String: [UInt8]] = [:]
            var maps: [String: [UInt8]] = [:]
            for time in ["2021", "2024-05"] {
                let out = NSTemporaryDirectory() + "qgis-\(time)-\(UUID().uuidString).png"
                let (status, log) = try await ServerFixture.run(
                    "/usr/bin/python3",
                    [
                        ServerFixture.root + "/Tests/ServerTests/Clients/qgis_wmts_time.py",
                        base + "/wmts/1.0.0/WMTSCapabilities.xml", "hdf", time, "\(minX)", "\(minY)", "\(maxX)",
                        "\(maxY)", "256", out,
                    ])
                let line = log.split(separator: "\n").last.map(String.init) ?? ""
                #expect(status == 0 && line.contains("\"valid\": true") && line.contains("\"saved\": true"), "\(log)")
                let ds = try Dataset.open(out)
                var px = [UInt8](repeating: 0, count: 256 * 256 * 4)
                try px.withUnsafeMutableBufferPointer {
                    try ds.read(
                        x: 0, y: 0, width: 256, height: 256, bands: [1, 2, 3], into: $0.baseAddress!, bufferWidth: 256,
                        bufferHeight: 256, pixelSpace: 4)
                }
                renders[time] = px
                let wms =
                    "/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=hdf&STYLES=&CRS=EPSG:2154&BBOX=\(minX),\(minY),\(maxX),\(maxY)&WIDTH=256&HEIGHT=256&FORMAT=image/jpeg&TIME=\(time)"
                maps[time] = try await client.execute(uri: wms, method: .get) { try Self.pixels($0.body) }
            }
            let (r21, r24) = (try #require(renders["2021"]), try #require(renders["2024-05"]))
            let (m21, m24) = (try #require(maps["2021"]), try #require(maps["2024-05"]))
            #expect(Self.difference(r21, m21) < 12)
            #expect(Self.difference(r24, m24) < 12)
            #expect(Self.difference(r21, m24) > 30)
            #expect(Self.difference(r24, m21) > 30)
        }
    }
}
