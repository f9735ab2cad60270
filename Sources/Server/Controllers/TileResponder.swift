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
        var headers = HTTPFields()
        headers[.eTag] = t.etag
        headers[.cacheControl] = admin ? "private, no-store" : t.cacheControl
        if let match = request.headers[.ifNoneMatch],
            match == "*"
                || match.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == t.etag })
        {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentType] = t.mimeType
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: t.bytes))
    }

    private func blank(_ tile: TileRequest) -> TileResponse? {
        guard service.configuration.emptyTile == .blank else { return nil }
        return try? service.blankTile(tile.encoding, tileset: tile.tileset)
    }
}

extension String {
    /// Parses a decimal tile index; nil for anything else (signs, spaces, overflowing numbers).
    var tileIndex: Int? {
        guard !isEmpty, count <= 9, allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(self)
    }
}
