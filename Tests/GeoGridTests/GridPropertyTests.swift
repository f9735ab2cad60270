import Foundation
import PropertyBased
import Testing

@testable import GeoGrid

/// Generated boxes against the grid math every render starts from (issue 11): a WMS BBOX or an
/// extract envelope reaches `tiles(covering:)` straight from a client.
struct GridPropertyTests {
    static func grid(_ id: String) throws -> TileMatrixSet {
        let url = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("config/tms/\(id).json")
        return try TileMatrixSet.decode(Data(contentsOf: url))
    }

    /// A coordinate on the grids' scale (Lambert-93 and WebMercator are within ±2.1e7 m).
    static let ordinary = Gen<Double>.double(in: -3e7...3e7)
    /// Anything a client may send once parsed as a finite Double.
    static let anyFinite = zip(Gen<Int>.int(in: 0...2), ordinary, Gen<Double>.double(in: -308...308), Gen<Bool>.bool)
        .map { kind, plain, exponent, negative in
            switch kind {
            case 0: plain
            case 1: (negative ? -1 : 1) * pow(10, exponent)
            default: negative ? -Double.greatestFiniteMagnitude : .greatestFiniteMagnitude
            }
        }

    /// Checks the covering of `box` at `z`: inside the matrix, and every tile of it meets the box.
    static func checkCovering(_ tms: TileMatrixSet, _ box: BoundingBox, z: Int) {
        guard let m = tms.matrix(z), let range = tms.tiles(covering: box, z: z) else { return }
        #expect(range.minCol >= 0 && range.minRow >= 0 && range.maxCol < m.matrixWidth && range.maxRow < m.matrixHeight)
        for corner in [
            TileCoordinate(z: z, col: range.minCol, row: range.minRow),
            TileCoordinate(z: z, col: range.maxCol, row: range.maxRow),
        ] {
            let b = tms.bounds(of: corner)
            #expect(b.maxX >= box.minX && b.minX <= box.maxX && b.maxY >= box.minY && b.minY <= box.maxY, "\(box)")
        }
    }

    /// Random boxes from `values` on both grids at every level: the covering stays in the matrix.
    static func checkCoverings<Shrink: SendableSequenceType>(of values: Generator<Double, Shrink>) async throws {
        let grids = try ["PM", "2154_5cm"].map(Self.grid)
        await propertyCheck(
            count: 1000, input: Gen<Int>.int(in: 0...1), Gen<Int>.int(in: 0...22), values.array(of: 4)
        ) { g, z, v in
            let box = BoundingBox(
                minX: min(v[0], v[1]), minY: min(v[2], v[3]), maxX: max(v[0], v[1]), maxY: max(v[2], v[3]))
            Self.checkCovering(grids[g], box, z: z)
        }
    }

    @Test func coveringOfOrdinaryBoxesStaysInTheMatrix() async throws {
        try await Self.checkCoverings(of: Self.ordinary)
    }

    @Test func coveringOfAnyFiniteBoxStaysInTheMatrix() async throws {
        try await Self.checkCoverings(of: Self.anyFinite)
    }
}
