import Hummingbird

/// Turns a tile into an HTTP response: conditional requests, caching headers, empty tiles.
struct TileResponder: Sendable {
    let service: TileService

    func respond(
        _ tile: TileRequest, request: Request, style: ServiceError.Style, strictLimits: Bool
    ) throws -> Response {
        // Administrators see gated tilesets whole; their tiles must not be cached by proxies.
        let admin = service.isAdmin(request.headers[.authorization])
        let found = try service.tile(tile, style: style, strictLimits: strictLimits, seesEverything: admin)
        guard let t = found ?? blank(tile) else {
            throw ServiceError(.notFound, "no tile at \(tile.z)/\(tile.col)/\(tile.row)", style: style)
        }
        let (status, headers) = t.answer(ifNoneMatch: request.headers[.ifNoneMatch], admin: admin)
        return status == .ok
            ? Response(status: status, headers: headers, body: .init(byteBuffer: t.bytes))
            : Response(status: status, headers: headers)
    }

    private func blank(_ tile: TileRequest) -> TileResponse? {
        guard service.configuration.emptyTile == .blank else { return nil }
        return try? service.blankTile(tile.encoding, tileset: tile.tileset)
    }
}

extension TileResponse {
    /// Status and headers for a request with this `If-None-Match`: 304 when the client's copy is
    /// current, else 200 with the type. Administrators' tiles are kept out of shared caches.
    func answer(ifNoneMatch: String?, admin: Bool = false) -> (HTTPResponse.Status, HTTPFields) {
        var headers = HTTPFields()
        headers[.eTag] = etag
        headers[.cacheControl] = admin ? "private, no-store" : cacheControl
        if isCurrent(ifNoneMatch: ifNoneMatch) { return (.notModified, headers) }
        headers[.contentType] = mimeType
        return (.ok, headers)
    }

    /// True when the client's copy, named by `If-None-Match`, is this tile.
    func isCurrent(ifNoneMatch: String?) -> Bool {
        guard let match = ifNoneMatch else { return false }
        return match == "*"
            || match.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag })
    }
}

extension String {
    /// Parses a decimal tile index; nil for anything else (signs, spaces, overflowing numbers).
    var tileIndex: Int? {
        guard !isEmpty, count <= 9, allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(self)
    }
}
