import Foundation
import Serving

/// The tile URLs the fast lane knows, named as the router names them in metrics.
package enum FastRoute: String, Sendable, CaseIterable {
    case xyz = "/tiles/{tileset}/{tms}/{z}/{x}/{file}"
    case wmtsREST = "/wmts/1.0.0/{layer}/{style}/{tms}/{z}/{row}/{file}"

    /// `/tiles/T/G/z/x/y.ext` or `/wmts/1.0.0/T/normal/G/z/row/col.ext`, with plain names and
    /// numbers only; nil for anything else (the router then decides). Works on the UTF-8 bytes:
    /// this runs for every request.
    package static func parse(_ path: String) -> (FastRoute, TileRequest)? {
        var path = path
        return path.withUTF8 { parse(UnsafeRawBufferPointer($0)) }
    }

    /// The same on the bytes of a request target (no allocation but the names). Plain memory with
    /// integer offsets: this runs for every request, and a generic collection's indices cost it
    /// several times more (`perf` on the fast lane).
    package static func parse(_ bytes: UnsafeRawBufferPointer) -> (FastRoute, TileRequest)? {
        let slash = UInt8(ascii: "/")
        let n = bytes.count
        guard n > 0, n < 256, bytes[0] == slash else { return nil }
        // Offsets of the slashes, then the end as a last boundary (on the stack).
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: 9) { at -> (FastRoute, TileRequest)? in
            var count = 0
            for i in 0..<n {
                switch bytes[i] {
                case slash:
                    guard count < 8 else { return nil }
                    at[count] = i
                    count += 1
                case UInt8(ascii: "?"), UInt8(ascii: "%"): return nil
                default: break
                }
            }
            at[count] = n
            /// The segment after the `k`-th slash.
            func part(_ k: Int) -> UnsafeRawBufferPointer {
                UnsafeRawBufferPointer(rebasing: bytes[(at[k] + 1)..<at[k + 1]])
            }
            func equals(_ k: Int, _ word: StaticString) -> Bool {
                let p = part(k)
                return p.count == word.utf8CodeUnitCount && memcmp(p.baseAddress!, word.utf8Start, p.count) == 0
            }
            return route(count: count, part: part, equals: equals)
        }
    }

    /// The route and tile, once the target is cut at its slashes.
    private static func route(
        count: Int, part: (Int) -> UnsafeRawBufferPointer, equals: (Int, StaticString) -> Bool
    ) -> (FastRoute, TileRequest)? {
        let route: FastRoute
        let names: (tileset: Int, grid: Int, z: Int, first: Int)
        if count == 6, equals(0, "tiles") {
            (route, names) = (.xyz, (1, 2, 3, 4))
        } else if count == 8, equals(0, "wmts"), equals(1, "1.0.0"), equals(3, "normal") {
            (route, names) = (.wmtsREST, (2, 4, 5, 6))
        } else {
            return nil
        }
        let file = part(count - 1)
        guard !part(names.tileset).isEmpty, !part(names.grid).isEmpty,
            let dot = file.lastIndex(of: UInt8(ascii: ".")),
            let encoding = TileEncoding(
                extension: Substring(decoding: UnsafeRawBufferPointer(rebasing: file[(dot + 1)...]), as: UTF8.self)),
            let z = tileIndex(part(names.z)), let a = tileIndex(part(names.first)),
            let b = tileIndex(UnsafeRawBufferPointer(rebasing: file[..<dot]))
        else { return nil }
        // XYZ is z/x/y (column first), WMTS REST z/row/col.
        let (col, row) = route == .xyz ? (a, b) : (b, a)
        let tile = TileRequest(
            tileset: String(decoding: part(names.tileset), as: UTF8.self),
            grid: String(decoding: part(names.grid), as: UTF8.self), z: z, col: col, row: row,
            encoding: encoding)
        return (route, tile)
    }
}
