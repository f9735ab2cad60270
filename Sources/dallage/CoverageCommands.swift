import ArgumentParser
import Coverage
import Foundation
import Logging
import Pyramid
import Serving

/// Where the coverage database is: `--db`, else `DALLAGE_DB`, else `<store>/dallage.sqlite`.
struct DatabaseOptions: ParsableArguments {
    @Option(
        help: """
            Coverage database: a SQLite file or postgres://user:password@host:port/db?sslmode=… \
            Default: DALLAGE_DB, else <store>/dallage.sqlite.
            """)
    var db: String?
    @Option(help: "Store of pyramids (for tiled progress).") var store = "store"

    /// The coverage service on this database, with tiled progress read from `store` on `grid`'s
    /// pyramids (`render_grid`).
    func service(grid: String = defaultRenderGrid) async throws -> CoverageService {
        let store = try storeFolder()
        let text =
            db ?? ProcessInfo.processInfo.environment["DALLAGE_DB"]
            ?? (store as NSString).appendingPathComponent("dallage.sqlite")
        let location: DatabaseLocation
        do { location = try DatabaseLocation(parsing: text) } catch { throw ValidationError(error.message) }
        var logger = Logger(label: "dallage.database")
        logger.logLevel = .error
        return CoverageService(
            store: try await location.open(logger: logger), adminTokens: [],
            footprints: StoreFootprints(store: store, grid: grid))
    }

    /// The store's folder; an `s3://` store or another URL is a clear error.
    func storeFolder() throws -> String {
        try localFolder(store)
    }
}

/// Whoever runs the command line on the server holds the database: an administrator.
private let shell = Principal.admin("cli:\(ProcessInfo.processInfo.environment["USER"] ?? "shell")")

/// Prints a JSON value, indented.
private func printJSON(_ v: JSONValue) {
    let data = try? JSONSerialization.data(
        withJSONObject: JSONSerialization.jsonObject(with: Data(v.text.utf8)),
        options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    print(data.map { String(decoding: $0, as: UTF8.self) } ?? v.text)
}

struct TerritoriesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "territories", abstract: "Administrative boundaries that project perimeters refer to.",
        subcommands: [Import.self, List.self])

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import communes, EPCI or départements from GeoJSON, GeoPackage or Shapefile (any CRS).")
        @Argument(help: "Vector file.") var file: String
        @Option(help: "commune, epci or departement.") var level: Territory.Level
        @Option(name: .customLong("code-field"), help: "Field holding the code (INSEE, SIREN…).") var codeField: String
        @Option(name: .customLong("name-field"), help: "Field holding the name.") var nameField: String
        @Option(name: .customLong("departement-field"), help: "Field holding the département code, if any.")
        var departementField: String?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let (inserted, updated, skipped) = try await database.service().importTerritories(
                path: file, level: level, codeField: codeField, nameField: nameField,
                departementField: departementField)
            print("\(level.rawValue): \(inserted) new, \(updated) updated, \(skipped.count) skipped")
            for s in skipped { print("  skipped \(s)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List territories matching a name or code.")
        @Option var level: Territory.Level?
        @Option(name: .short, help: "Part of a name or the start of a code.") var q: String?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            for t in try await database.service().store.territories(level: level, query: q, limit: 1000) {
                print("\(t.reference)\t\(t.name)\t\(String(format: "%.3f", t.areaM2 / 1e6)) km²")
            }
        }
    }
}

extension Territory.Level: ExpressibleByArgument {}
extension Statut: ExpressibleByArgument {}

struct ProjectsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "projects", abstract: "PCRS projects (tranches): statuses, perimeters, tiled progress.",
        subcommands: [List.self, Show.self, Create.self, SetStatus.self, History.self, Delete.self, RenewKey.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List projects with their current status.")
        @Option var statut: Statut?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let service = try await database.service()
            for p in try await service.projects(.init(statut: statut)) {
                let s = p.statut(on: service.currentDay)
                print(
                    "\(p.id)\t\(p.fields.nom)\t\(s?.rawValue ?? "-")\t\(String(format: "%.3f", p.areaM2 / 1e6)) km²")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A project as JSON, with its tiled progress per linked tileset.")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let service = try await database.service()
            printJSON(try service.document(try await service.project(id)))
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a project from a JSON file of its fields (nom, nature, regime, perimetres, etapes…).")
        @Argument(help: "JSON file ('-' for standard input).") var file: String
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let data =
                file == "-"
                ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: file))
            let fields: ProjectFields
            do { fields = try JSONDecoder().decode(ProjectFields.self, from: data) } catch {
                throw ValidationError(StatusRules.describe(error))
            }
            let (p, key) = try await database.service().create(fields, by: shell)
            print("created project \(p.id) '\(p.fields.nom)'; editor key (shown once): \(key)")
        }
    }

    struct SetStatus: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-status", abstract: "Add a status step (today unless --date).")
        @Argument var id: Int64
        @Argument var statut: Statut
        @Option(help: "Start date YYYY-MM-DD.") var date: String?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let service = try await database.service()
            let day = date ?? service.currentDay
            guard StatusRules.isDate(day) else { throw ValidationError("--date must be YYYY-MM-DD") }
            let p = try await service.addStep(id, Etape(statut: statut, dateDebut: day), by: shell)
            print(
                "project \(p.id): \(p.statut(on: service.currentDay)?.rawValue ?? "-") (step \(statut.rawValue) from \(day))"
            )
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every change made to a project.")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            for h in try await database.service().history(id) {
                print("\(h.at)\t\(h.actor)\t\(h.action)\t\(h.changes.text)")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a project (kept in the history).")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.service().delete(id, by: shell)
            print("project \(id) deleted")
        }
    }

    struct RenewKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "renew-key", abstract: "Give a project a new editor key (the old one stops working).")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            print(try await database.service().renewEditorKey(id, by: shell))
        }
    }
}
