import Foundation
import HummingbirdTesting
import NIOCore
import Raster
import Server
import Testing

/// The pyramid that stands for a tileset's grids (`render_grid`): in extracts.
@Suite struct RenderGridTests {
    let store = ServerFixture.shared + "/store"

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
