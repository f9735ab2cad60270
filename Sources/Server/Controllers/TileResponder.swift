import HTTPTypes
import Hummingbird
import Serving

/// Turns a tile into an HTTP response: conditional requests, caching headers, empty tiles.
struct TileResponder: Sendable {
    let service: TileService

    func respond(_ tile: TileRequest, request: Request, strictLimits: Bool) async throws -> Response {
        // Administrators see gated tilesets whole; their tiles must not be cached by proxies.
        let viewer = service.viewer(authorization: request.headers[.authorization])
        let admin = viewer == .administrator
        let found = try await service.tile(tile, viewer: viewer, strictLimits: strictLimits)
        guard let t = found ?? blank(tile) else {
            throw ServingError(.notFound, "no tile at \(tile.z)/\(tile.col)/\(tile.row)")
        }
        let (status, headers) = t.answer(ifNoneMatch: request.headers[.ifNoneMatch], admin: admin)
        return status == .ok
            ? Response(status: status, headers: headers, body: .init(byteBuffer: t.bytes))
            : Response(status: status, headers: headers)
    }

    private func blank(_ tile: TileRequest) -> TileResponse? {
        guard service.settings.emptyTile == .blank else { return nil }
        return try? service.blankTile(tile.encoding, tileset: tile.tileset)
    }
}

extension TileResponse {
    /// Status and headers for a request with this `If-None-Match`: 304 when the client's copy is
    /// current, else 200 with the type. Administrators' tiles are kept out of shared caches.
    func answer(ifNoneMatch: String?, admin: Bool = false) -> (HTTPResponse.Status, HTTPFields) {
        let current = isCurrent(ifNoneMatch: ifNoneMatch)
        var headers = HTTPFields()
        headerFields(current: current, admin: admin) { headers[$0] = $1 }
        return (current ? .notModified : .ok, headers)
    }

    /// Hands over the tile's own headers, in order, for the router and the fast lane alike: the
    /// validator, caching, and the type unless the answer is 304 (no array on the hot path).
    func headerFields(current: Bool, admin: Bool = false, _ add: (HTTPField.Name, String) -> Void) {
        add(.eTag, etag)
        add(.cacheControl, admin ? "private, no-store" : cacheControl)
        if !current { add(.contentType, mimeType) }
    }

    /// True when the client's copy, named by `If-None-Match`, is this tile.
    func isCurrent(ifNoneMatch: String?) -> Bool {
        guard let match = ifNoneMatch else { return false }
        return match == "*"
            || match.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag })
    }
}

/// A decimal tile index of 1 to 9 ASCII digits; nil for anything else (signs, spaces, other
/// digits, overflowing numbers). One reader for route parameters and the fast lane's bytes.
func tileIndex<Digits: Collection<UInt8>>(_ digits: Digits) -> Int? {
    // One URL per tile: no sign, no leading zero (but "0" itself), at most nine digits.
    guard !digits.isEmpty, digits.count <= 9, digits.count == 1 || digits.first != UInt8(ascii: "0") else {
        return nil
    }
    var n = 0
    for d in digits {
        guard d >= UInt8(ascii: "0"), d <= UInt8(ascii: "9") else { return nil }
        n = n * 10 + Int(d - UInt8(ascii: "0"))
    }
    return n
}

extension String {
    /// Parses a decimal tile index (see `tileIndex(_:)`).
    var tileIndex: Int? { Server.tileIndex(utf8) }
}
