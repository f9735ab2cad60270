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
        return path.withUTF8 { parse($0) }
    }

    /// The same on the bytes of a request target (no allocation but the names).
    package static func parse<Bytes: BidirectionalCollection<UInt8>>(_ bytes: Bytes) -> (FastRoute, TileRequest)? {
        let slash = UInt8(ascii: "/")
        guard bytes.count < 256, bytes.first == slash,
            !bytes.contains(where: { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "%") })
        else { return nil }
        return withUnsafeTemporaryAllocation(of: Bytes.Index.self, capacity: 9) {
            slashes -> (FastRoute, TileRequest)? in
            var count = 0
            for i in bytes.indices where bytes[i] == slash {
                guard count < slashes.count else { return nil }
                slashes[count] = i
                count += 1
            }
            /// The segment after the `k`-th slash.
            func part(_ k: Int) -> Bytes.SubSequence {
                bytes[bytes.index(after: slashes[k])..<(k + 1 < count ? slashes[k + 1] : bytes.endIndex)]
            }
            func equals(_ k: Int, _ word: StaticString) -> Bool {
                part(k).elementsEqual(UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount))
            }
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
                    extension: Substring(decoding: file[file.index(after: dot)...], as: UTF8.self)),
                let z = tileIndex(part(names.z)), let a = tileIndex(part(names.first)),
                let b = tileIndex(file[..<dot])
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

}
