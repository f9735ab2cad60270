import Foundation
import GeoGrid
import Pyramid
import Testing

/// `pyramid.json` as readers see it: the publication field keeps the spelling of existing files.
struct ManifestTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// A manifest of one empty pyramid on the 2154_5cm grid, as `pyramid.json` text.
    static func manifestText(publish: Publication?) throws -> String {
        let tms = try TileMatrixSet.decode(Data(contentsOf: URL(fileURLWithPath: root + "/config/tms/2154_5cm.json")))
        let box = BoundingBox(minX: 704_000, minY: 7_058_000, maxX: 704_200, maxY: 7_058_200)
        var manifest = PyramidManifest(
            tileset: "t", tileMatrixSet: tms, tileSize: 256, format: .jpeg, quality: 85, resampling: "average",
            minZoom: 0, maxZoom: 22, levels: [], bounds: box, wgs84Bounds: box,
            shardScheme: ShardScheme(minZoom: 0, maxZoom: 22), shards: [], sourcesDigest: "", created: "",
            tool: "test")
        manifest.publish = publish
        let dir = NSTemporaryDirectory() + "dallage-manifest-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try manifest.save(directory: dir)
        return try String(contentsOfFile: dir + "/" + PyramidManifest.fileName, encoding: .utf8)
    }

    static func decode(_ text: String) throws -> PyramidManifest {
        try JSONDecoder().decode(PyramidManifest.self, from: Data(text.utf8))
    }

    @Test(arguments: [(Publication.all, "all"), (.byStatus, "by-status")])
    func publicationIsWrittenAndReadWithItsFileSpelling(publication: Publication, spelling: String) throws {
        let text = try Self.manifestText(publish: publication)
        #expect(text.contains(#""publish" : "\#(spelling)""#), "\(text.prefix(400))")
        #expect(try Self.decode(text).publish == publication)
    }

    @Test func aManifestWithoutPublicationDecodesAsUngated() throws {
        let text = try Self.manifestText(publish: nil)
        #expect(!text.contains(#""publish""#))
        #expect(try Self.decode(text).publish == nil)
    }

    @Test func anUnknownPublicationIsRefusedNamingTheAcceptedValues() throws {
        let text = try Self.manifestText(publish: .byStatus).replacingOccurrences(
            of: #""publish" : "by-status""#, with: #""publish" : "by_status""#)
        do {
            _ = try Self.decode(text)
            Issue.record("a manifest publishing 'by_status' was accepted")
        } catch {
            #expect("\(error)".contains("publish must be all or by-status, not 'by_status'"), "\(error)")
        }
    }
}
