import Crypto
import Foundation
import Pyramid
import Raster
import Synchronization

/// Who is asking. Readers need nothing; administrators hold a token; an editor holds the secret
/// key of one project.
public enum Principal: Sendable, Equatable {
    case reader
    case admin(String)
    case editor(Int64)

    /// How the history names them (never the secret).
    public var actor: String {
        switch self {
        case .reader: "reader"
        case .admin(let id): "admin:\(id)"
        case .editor(let p): "editor:project-\(p)"
        }
    }

    public var isAdmin: Bool { if case .admin = self { true } else { false } }
}

/// Projects, territories, coverage and progress: the rules above a `CoverageStore`.
public final class CoverageService: Sendable {
    public let store: any CoverageStore
    /// SHA-256 (hex) of each administrator token.
    let adminTokenHashes: Set<String>
    /// The store of pyramids, for tiled footprints.
    public let pyramidStore: String?
    let today: @Sendable () -> String
    private let footprints = Mutex<[String: (Date, Geometry)]>([:])

    public init(
        store: any CoverageStore, adminTokens: [String], pyramidStore: String?,
        today: @escaping @Sendable () -> String = { StatusRules.today() }
    ) {
        self.store = store
        adminTokenHashes = Set(adminTokens.filter { !$0.isEmpty }.map(Self.hashToken))
        self.pyramidStore = pyramidStore
        self.today = today
    }

    /// A token as it is stored: hex SHA-256. A `sha256:<hex>` token is taken as already hashed.
    public static func hashToken(_ token: String) -> String {
        if token.hasPrefix("sha256:") { return String(token.dropFirst(7)).lowercased() }
        return SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// A new random secret (editor keys).
    public static func newSecret() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }

    // MARK: - Authentication

    /// The principal for an `Authorization: Token …` header (nil header: a reader). A token that
    /// is neither an administrator's nor an editor key is refused.
    public func authenticate(authorization: String?) async throws -> Principal {
        guard let authorization, !authorization.isEmpty else { return .reader }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "token" || parts[0].lowercased() == "bearer" else {
            throw CoverageError(.unauthorized, "use 'Authorization: Token <secret>'")
        }
        let hash = Self.hashToken(String(parts[1]).trimmingCharacters(in: .whitespaces))
        if adminTokenHashes.contains(hash) { return .admin(String(hash.prefix(8))) }
        if let p = try await store.project(editorKeyHash: hash) { return .editor(p) }
        throw CoverageError(.unauthorized, "unknown token")
    }

    /// True when the header carries an administrator token (no database access: tile requests).
    public func isAdmin(authorization: String?) -> Bool {
        guard let authorization else { return false }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return false }
        return adminTokenHashes.contains(Self.hashToken(String(parts[1]).trimmingCharacters(in: .whitespaces)))
    }

    private func requireAdmin(_ who: Principal) throws(CoverageError) {
        switch who {
        case .admin: return
        case .reader: throw CoverageError(.unauthorized, "this needs an administrator token")
        case .editor: throw CoverageError(.forbidden, "only an administrator may do this")
        }
    }

    private func requireEditor(_ who: Principal, of project: Int64) throws(CoverageError) {
        switch who {
        case .admin: return
        case .editor(let p) where p == project: return
        case .editor: throw CoverageError(.forbidden, "this editor key belongs to another project")
        case .reader:
            throw CoverageError(.unauthorized, "this needs an administrator token or the project's editor key")
        }
    }

    // MARK: - Territories

    /// Imports territories from any vector file OGR reads, in any CRS; re-importing updates in place.
    public func importTerritories(
        path: String, level: Territory.Level, codeField: String, nameField: String, departementField: String? = nil
    ) async throws -> (inserted: Int, updated: Int, skipped: [String]) {
        let (crs, features) = try VectorFile.read(path)
        let source = try crs ?? SpatialReference.wgs84()
        let l93 = try SpatialReference(epsg: 2154)
        let toL93 = try CoordinateTransform(from: source, to: l93)
        let toWGS84 = try CoordinateTransform(from: l93, to: SpatialReference.wgs84())
        var out: [Territory] = []
        var skipped: [String] = []
        for (i, f) in features.enumerated() {
            guard let code = f.fields[codeField], !code.isEmpty else {
                skipped.append("feature \(i): no \(codeField)")
                continue
            }
            guard var g = f.geometry, g.isAreal else {
                skipped.append("\(code): not a polygon")
                continue
            }
            g = try g.transformed(toL93)
            if !g.isValid { g = try g.makeValid() }
            let dep =
                departementField.flatMap { f.fields[$0] }
                ?? (level == .departement ? code : level == .commune ? Self.departement(ofINSEE: code) : nil)
            out.append(
                Territory(
                    level: level, code: code, name: f.fields[nameField] ?? code, departement: dep, wktL93: g.wkt,
                    geoJSONWGS84: try g.transformed(toWGS84).geoJSON(precision: 6), areaM2: g.area))
        }
        let (inserted, updated) = try await store.upsertTerritories(out)
        return (inserted, updated, skipped)
    }

    /// The département of a commune from its INSEE code (`2A`/`2B` in Corsica, 3 digits overseas).
    static func departement(ofINSEE code: String) -> String? {
        guard code.count == 5 else { return nil }
        return code.hasPrefix("97") ? String(code.prefix(3)) : String(code.prefix(2))
    }

    // MARK: - Projects

    /// The perimeter (Lambert-93) of a project's fields, checked against the rules.
    func perimeter(_ fields: ProjectFields) async throws -> Geometry {
        let found = try await store.territories(references: fields.perimetres)
        try StatusRules.validate(fields) { found[$0] != nil }
        var parts = try fields.perimetres.compactMap { found[$0] }.map { try Geometry.fromWKT($0.wktL93) }
        if let drawn = fields.geometrie {
            var g: Geometry
            do {
                g = try Geometry.fromGeoJSON(drawn.text)
            } catch {
                throw CoverageError(.invalid, "geometrie is not a GeoJSON geometry")
            }
            guard g.isAreal else { throw CoverageError(.invalid, "geometrie must be a Polygon or MultiPolygon") }
            g = try g.transformed(CoordinateTransform(from: SpatialReference.wgs84(), to: SpatialReference(epsg: 2154)))
            if !g.isValid {
                let reason = g.invalidityReason ?? "invalid"
                g = try g.makeValid()
                if g.isEmpty { throw CoverageError(.invalid, "geometrie is invalid and cannot be repaired: \(reason)") }
            }
            parts.append(g)
        }
        return try Geometry.union(parts)
    }

    public func create(_ fields: ProjectFields, by who: Principal) async throws -> (Project, editorKey: String) {
        try requireAdmin(who)
        let g = try await perimeter(fields)
        let now = Self.timestamp()
        let key = Self.newSecret()
        let p = Project(id: 0, fields: fields, perimeterWKT: g.wkt, areaM2: g.area, createdAt: now, updatedAt: now)
        let created = try await store.insertProject(
            p, editorKeyHash: Self.hashToken(key),
            history: HistoryEntry(at: now, actor: who.actor, action: "create", changes: try Self.diff(nil, fields)))
        return (created, key)
    }

    public func project(_ id: Int64) async throws -> Project {
        guard let p = try await store.project(id: id) else { throw CoverageError(.notFound, "no project \(id)") }
        return p
    }

    /// Replaces a project's fields.
    @discardableResult
    public func update(_ id: Int64, _ fields: ProjectFields, by who: Principal, action: String = "update")
        async throws -> Project
    {
        try requireEditor(who, of: id)
        var p = try await project(id)
        let changes = try Self.diff(p.fields, fields)
        let g = try await perimeter(fields)
        let now = Self.timestamp()
        p.fields = fields
        p.perimeterWKT = g.wkt
        p.areaM2 = g.area
        p.updatedAt = now
        try await store.updateProject(
            p, history: HistoryEntry(at: now, actor: who.actor, action: action, changes: changes))
        return p
    }

    /// Changes only the fields present in `patch` (a JSON object of project fields).
    public func patch(_ id: Int64, _ patch: [String: JSONValue], by who: Principal) async throws -> Project {
        try requireEditor(who, of: id)
        let p = try await project(id)
        guard case .object(var merged) = try JSONValue.parse(try p.fields.jsonText()) else {
            throw CoverageError(.malformed, "cannot read the project")
        }
        for (k, v) in patch { merged[k] = v }
        let fields: ProjectFields
        do {
            fields = try JSONDecoder().decode(ProjectFields.self, from: Data(JSONValue.object(merged).text.utf8))
        } catch {
            throw CoverageError(.malformed, StatusRules.describe(error))
        }
        return try await update(id, fields, by: who)
    }

    /// Adds a status step (the web page's and the CLI's `set-status`).
    public func addStep(_ id: Int64, _ step: Etape, by who: Principal) async throws -> Project {
        try requireEditor(who, of: id)
        var fields = try await project(id).fields
        fields.etapes.append(step)
        return try await update(id, fields, by: who, action: "status")
    }

    public func delete(_ id: Int64, by who: Principal) async throws {
        try requireAdmin(who)
        let now = Self.timestamp()
        try await store.deleteProject(
            id: id, at: now, history: HistoryEntry(at: now, actor: who.actor, action: "delete", changes: .object([:])))
    }

    /// A new editor key for a project (the old one stops working); shown once.
    public func renewEditorKey(_ id: Int64, by who: Principal) async throws -> String {
        try requireAdmin(who)
        let key = Self.newSecret()
        try await store.setEditorKeyHash(
            project: id, hash: Self.hashToken(key),
            history: HistoryEntry(
                at: Self.timestamp(), actor: who.actor, action: "renew-editor-key", changes: .object([:])))
        return key
    }

    public func history(_ id: Int64) async throws -> [HistoryEntry] {
        _ = try await project(id)
        return try await store.history(project: id)
    }

    public var currentDay: String { today() }

    // MARK: - Helpers

    /// An ISO 8601 UTC instant with milliseconds (history, jobs); sorts as text.
    public static func timestamp(_ date: Date = Date()) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: date)
    }

    /// `{field: {"from": old, "to": new}}` for each top-level field that changed.
    static func diff(_ old: ProjectFields?, _ new: ProjectFields) throws -> JSONValue {
        let before = try old.map { try JSONValue.parse($0.jsonText()) } ?? .object([:])
        let after = try JSONValue.parse(new.jsonText())
        guard case .object(let a) = after else { return .object([:]) }
        var out: [String: JSONValue] = [:]
        for (k, v) in a where before[k] != v {
            out[k] = .object(["from": before[k] ?? .null, "to": v])
        }
        return .object(out)
    }

    // MARK: - Tiled progress

    /// The footprint actually tiled for a tileset (Lambert-93), from the footprint the tiler
    /// records beside the pyramid; the `2154_5cm` pyramid when there is one.
    public func tiledFootprint(tileset: String) throws -> Geometry? {
        guard let root = pyramidStore else { return nil }
        let dir = (root as NSString).appendingPathComponent(tileset)
        guard let grids = try? FileManager.default.contentsOfDirectory(atPath: dir).sorted() else { return nil }
        let ordered = grids.filter { $0.hasPrefix("2154") } + grids.filter { !$0.hasPrefix("2154") }
        for grid in ordered {
            let path = (dir as NSString).appendingPathComponent("\(grid)/\(TiledFootprint.fileName)")
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: path),
                let mtime = attrs[.modificationDate] as? Date
            else { continue }
            if let (t, g) = footprints.withLock({ $0[path] }), t == mtime { return g }
            let g = try TiledFootprint.read(path: path)
            footprints.withLock { $0[path] = (mtime, g) }
            return g
        }
        return nil
    }

    /// Fraction of the perimeter present in each linked tileset, and what is missing (Lambert-93).
    public func progress(_ p: Project) throws -> [(tileset: String, fraction: Double?, missing: Geometry?)] {
        let perimeter = try Geometry.fromWKT(p.perimeterWKT)
        return try p.fields.tilesets.map { t in
            guard let footprint = try tiledFootprint(tileset: t), p.areaM2 > 0 else { return (t, nil, nil) }
            let present = try perimeter.intersection(footprint).area
            let missing = try perimeter.difference(footprint)
            return (t, min(1, present / p.areaM2), missing)
        }
    }

    /// The union (Lambert-93) of the perimeters of projects currently `disponible` whose
    /// deliverables are published in `tileset`.
    public func publishedPerimeter(tileset: String) async throws -> Geometry {
        let day = today()
        let parts = try await store.projects()
            .filter { $0.statut(on: day) == .disponible && $0.fields.tilesets.contains(tileset) }
            .map { try Geometry.fromWKT($0.perimeterWKT) }
        return try Geometry.union(parts)
    }
}
