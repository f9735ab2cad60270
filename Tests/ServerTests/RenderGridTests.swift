import Foundation
import HummingbirdTesting
import NIOCore
import Pyramid
import Raster
import Server
import Testing

@testable import Serving

/// The pyramid that stands for a tileset's grids (`render_grid`): in tiled progress and extracts.
@Suite struct RenderGridTests {
    let store = ServerFixture.shared + "/store"

    /// True when `a` and `b` cover the same area (to a square millimetre).
    static func same(_ a: Geometry, _ b: Geometry) throws -> Bool {
        try a.difference(b).area + b.difference(a).area < 1e-6
    }

    @Test func tiledProgressReadsTheRenderGridThenLambert93ThenTheFirstGrid() throws {
        let l93 = try TiledFootprint.read(path: store + "/pcrs/2154_5cm/" + TiledFootprint.fileName)
        let pm = try TiledFootprint.read(path: store + "/pcrs/PM/" + TiledFootprint.fileName)
        // Traced on other cells, the PM footprint is not the Lambert-93 one.
        #expect(try !Self.same(l93, pm))
        for (grid, expected) in [("2154_5cm", l93), ("PM", pm), ("2154_10cm", l93)] {
            let footprint = try #require(try StoreFootprints(store: store, grid: grid).footprint(of: "pcrs"))
            #expect(try Self.same(footprint, expected), "render_grid \(grid)")
        }
        #expect(StoreFootprints(store: store).tilesets() == ["pcrs"])
        #expect(try StoreFootprints(store: store).footprint(of: "nope") == nil)

        // Without a Lambert-93 footprint, the first grid's.
        let dir = try ServerFixture.copy()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.removeItem(atPath: dir + "/store/pcrs/2154_5cm/" + TiledFootprint.fileName)
        let first = try #require(try StoreFootprints(store: dir + "/store").footprint(of: "pcrs"))
        #expect(try Self.same(first, pm))
    }

    /// A direct extract at the pyramid's own resolution: 5 cm from 2154_5cm, PM's from PM.
    @Test(arguments: [("2154_5cm", true), ("PM", false), ("2154_10cm", true)])
    func extractsReadTheRenderGrid(setting: String, lambert93: Bool) async throws {
        let body = #"{"tileset":"pcrs","geometry":\#(HardeningExtractTests.triangle),"format":"gtiff"}"#
        try await ServerFixture.app(store: store) { $0.renderGrid = setting }.test(.router) { client in
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) { r in
                #expect(r.status == .ok, "\(String(buffer: r.body))")
                let path = NSTemporaryDirectory() + "render-grid-\(UUID().uuidString).tif"
                defer { try? FileManager.default.removeItem(atPath: path) }
                try Data(buffer: r.body).write(to: URL(fileURLWithPath: path))
                let pixel = try #require(try Dataset.open(path).geoTransform).pixelWidth
                #expect(lambert93 ? abs(pixel - 0.05) < 1e-9 : abs(pixel - 0.05) > 1e-3, "\(setting): \(pixel) m")
            }
        }
    }
}
