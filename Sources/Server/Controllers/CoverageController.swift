import Coverage
import Foundation
import Hummingbird
import Logging
import Serving

/// The coverage API under `/api`: territories, projects (CRUD, steps, history, editor keys),
/// the coverage map, statistics and CSV exports. Reads are open; writes need a token.
struct CoverageController: Sendable {
    let coverage: CoverageService
    let gate: PublicationGate?
    let catalog: PyramidCatalog
    let logger: Logger

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.getOrHead("/api/territories") { request, _ in try await territories(request) }
        router.getOrHead("/api/projects") { request, _ in try await list(request) }
        router.post("/api/projects") { request, context in try await create(request, context: context) }
        router.getOrHead("/api/projects.csv") { request, _ in
            try await run { csv(try await coverage.projectsCSV(), name: "projets.csv", request: request) }
        }
        router.getOrHead("/api/etapes.csv") { request, _ in
            try await run { csv(try await coverage.stepsCSV(), name: "etapes.csv", request: request) }
        }
        router.getOrHead("/api/projects/:id") { request, context in
            try await run { try json(coverage.document(try await coverage.project(try id(context))), request) }
        }
        router.put("/api/projects/:id") { request, context in
            try await write(request) { who in
                let fields = try await decode(ProjectFields.self, request, context: context)
                return try await coverage.update(try id(context), fields, by: who)
            }
        }
        router.patch("/api/projects/:id") { request, context in
            try await write(request) { who in
                let patch = try await decode([String: JSONValue].self, request, context: context)
                return try await coverage.patch(try id(context), patch, by: who)
            }
        }
        router.post("/api/projects/:id/etapes") { request, context in
            try await write(request) { who in
                let step = try await decode(Etape.self, request, context: context)
                guard StatusRules.isDate(step.dateDebut) else {
                    throw CoverageError(.invalid, "date_debut '\(step.dateDebut)' is not a date (YYYY-MM-DD)")
                }
                return try await coverage.addStep(try id(context), step, by: who)
            }
        }
        router.delete("/api/projects/:id") { request, context in
            try await run {
                let who = try await coverage.authenticate(authorization: request.headers[.authorization])
                try await coverage.delete(try id(context), by: who)
                await changed()
                return Response(status: .noContent)
            }
        }
        router.post("/api/projects/:id/editor-key") { request, context in
            try await run {
                let who = try await coverage.authenticate(authorization: request.headers[.authorization])
                let key = try await coverage.renewEditorKey(try id(context), by: who)
                return try json(.object(["editor_key": .string(key)]), request)
            }
        }
        router.getOrHead("/api/projects/:id/history") { request, context in
            try await run {
                let entries = try await coverage.history(try id(context))
                return try json(
                    .array(
                        entries.map {
                            .object([
                                "at": .string($0.at), "actor": .string($0.actor), "action": .string($0.action),
                                "changes": $0.changes,
                            ])
                        }), request)
            }
        }
        router.getOrHead("/api/projects/:id/missing.geojson") { request, context in
            try await run {
                geoJSON(try coverage.missingGeoJSON(try await coverage.project(try id(context))), request)
            }
        }
        router.getOrHead("/api/coverage.geojson") { request, _ in
            try await run { geoJSON(try await coverage.coverageGeoJSON(try filter(request)), request) }
        }
        router.getOrHead("/api/coverage/stats") { request, _ in
            try await run { try json(try await coverage.stats(), request) }
        }
    }

    // MARK: - Handlers

    func territories(_ request: Request) async throws -> Response {
        try await run {
            let q = request.uri.queryParameters
            var level: Territory.Level?
            if let l = q["level"].map(String.init) {
                guard let v = Territory.Level(rawValue: l) else {
                    throw CoverageError(.malformed, "level must be commune, epci or departement")
                }
                level = v
            }
            let limit = min(1000, q["limit"].flatMap { Int(String($0)) } ?? 50)
            let found = try await coverage.store.territories(
                level: level, query: q["q"].map(String.init), limit: max(1, limit))
            let withGeometry = q["geometry"] == "true"
            let items = try found.map { t -> JSONValue in
                var o: [String: JSONValue] = [
                    "level": .string(t.level.rawValue), "code": .string(t.code), "nom": .string(t.name),
                    "reference": .string(t.reference), "departement": t.departement.map { .string($0) } ?? .null,
                    "surface_km2": .number((t.areaM2 / 1e6 * 1e4).rounded() / 1e4),
                ]
                if withGeometry { o["geometry"] = try JSONValue.parse(t.geoJSONWGS84) }
                return .object(o)
            }
            return try json(.array(items), request)
        }
    }

    func list(_ request: Request) async throws -> Response {
        try await run {
            let projects = try await coverage.projects(try filter(request))
            return try json(.array(try projects.map { try coverage.document($0, withProgress: false) }), request)
        }
    }

    func create(_ request: Request, context: DallageRequestContext) async throws -> Response {
        try await run {
            let who = try await coverage.authenticate(authorization: request.headers[.authorization])
            let fields = try await decode(ProjectFields.self, request, context: context)
            let (project, key) = try await coverage.create(fields, by: who)
            await changed()
            guard case .object(var o) = try coverage.document(project) else { throw CoverageError(.notFound, "") }
            // The editor key is shown once, to the administrator who created the project.
            o["editor_key"] = .string(key)
            var r = try json(.object(o), request)
            r.status = .created
            r.headers[.location] = "/api/projects/\(project.id)"
            return r
        }
    }

    // MARK: - Helpers

    func filter(_ request: Request) throws -> CoverageService.Filter {
        let q = request.uri.queryParameters
        var f = CoverageService.Filter()
        if let s = q["statut"].map(String.init) {
            guard let v = Statut(rawValue: s) else { throw CoverageError(.malformed, "unknown statut '\(s)'") }
            f.statut = v
        }
        if let n = q["nature"].map(String.init) {
            guard let v = Nature(rawValue: n) else { throw CoverageError(.malformed, "unknown nature '\(n)'") }
            f.nature = v
        }
        f.territoire = q["territoire"].map(String.init)
        return f
    }

    func id(_ context: DallageRequestContext) throws -> Int64 {
        guard let s = context.parameters.get("id"), s.count <= 18, let v = Int64(s), v > 0 else {
            throw CoverageError(.notFound, "no such project")
        }
        return v
    }

    func decode<T: Decodable>(_ type: T.Type, _ request: Request, context: DallageRequestContext) async throws -> T {
        let body = try await request.body.collect(upTo: 16 << 20)
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer: body))
        } catch {
            throw CoverageError(.malformed, StatusRules.describe(error))
        }
    }

    /// Authenticates, runs a write and answers the project; publication is refreshed at once.
    func write(_ request: Request, _ body: (Principal) async throws -> Project) async throws -> Response {
        try await run {
            let who = try await coverage.authenticate(authorization: request.headers[.authorization])
            let project = try await body(who)
            await changed()
            // The change is stored: when the tiled footprints cannot be read now (an object store
            // down), the answer says so without the progress rather than as a failed write.
            do {
                return try json(coverage.document(project), request)
            } catch {
                let e = ServingError.from(error, what: "")
                guard e.kind == .unavailable else { throw error }
                logger.warning("project \(project.id) written; its progress cannot be read now: \(error)")
                guard case .object(var o) = try coverage.document(project, withProgress: false) else {
                    throw error
                }
                o["avancement_indisponible"] = .string(e.message)
                return try json(.object(o), request)
            }
        }
    }

    func changed() async {
        await gate?.refresh(tilesets: catalog.gatedTilesets, force: true)
    }

    /// Maps rule errors to JSON error answers. A refused write because the database cannot take
    /// it is logged for the operator; anything unforeseen is logged and answered as a JSON 500,
    /// never an empty body.
    func run(_ body: () async throws -> Response) async throws -> Response {
        do {
            return try await body()
        } catch let e as CoverageError {
            if e.kind == .unavailable { logger.error("coverage write refused", metadata: ["reason": "\(e.message)"]) }
            throw ServingError(e)
        } catch let e as any HTTPResponseError {
            throw e
        } catch {
            let e = ServingError.from(error, what: "internal error: the coverage request could not be completed")
            if e.kind == .internal { logger.error("coverage request failed", metadata: ["error": "\(error)"]) }
            throw e
        }
    }

    // Documents go through `Document.response` (gzip for clients that accept it), never cached:
    // they change with every write.
    func json(_ value: JSONValue, _ request: Request) throws -> Response {
        Document.response(
            Array(value.text.utf8), contentType: "application/json", request: request, cacheControl: "no-cache")
    }

    func geoJSON(_ text: String, _ request: Request) -> Response {
        Document.response(
            Array(text.utf8), contentType: "application/geo+json", request: request, cacheControl: "no-cache")
    }

    func csv(_ text: String, name: String, request: Request) -> Response {
        var r = Document.response(
            Array(text.utf8), contentType: "text/csv; charset=utf-8", request: request, cacheControl: "no-cache")
        r.headers[.contentDisposition] = "attachment; filename=\"\(name)\""
        return r
    }
}
