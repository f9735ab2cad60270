import Coverage
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A throwaway PostgreSQL 15 cluster (Debian's `postgresql-15`), started once by the first test
/// that asks for a database and stopped (`pg_ctl stop -m immediate`) when the test process ends.
/// Each test gets a database of its own. `initdb` and `postgres` refuse to run as root: as root
/// (CI), they run as the `postgres` user through `runuser`, in a folder that user owns.
///
/// Local (socket) connections are trusted, TCP ones need the password: the URL the tests use
/// goes through TCP with it, so a wrong password is refused as it would be in production.
public actor PostgresTestCluster {
    public static let shared = PostgresTestCluster()

    public static let binaries = "/usr/lib/postgresql/15/bin"
    public static let user = "dallage"

    struct Running: Sendable {
        /// The cluster's folder: `data/`, the socket, the log, the password file.
        var base: String
        var port: Int
        var password: String
    }

    private var starting: Task<Running, any Error>?

    /// A new, empty database on the cluster (started on first use), as the store connects to it.
    public func newDatabase() async throws -> PostgresLocation {
        let cluster = try await start()
        let name = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        try await ChildProcess.run(
            Self.binaries + "/createdb",
            ["-h", cluster.base, "-p", "\(cluster.port)", "-U", Self.user, name], log: cluster.base + "/createdb.log")
        return PostgresLocation(
            host: "127.0.0.1", port: cluster.port, user: Self.user, password: cluster.password, database: name,
            sslMode: .disable)
    }

    /// The running cluster: started by the first caller, awaited by the others.
    func start() async throws -> Running {
        if let starting { return try await starting.value }
        let task = Task { try await Self.startCluster() }
        starting = task
        return try await task.value
    }

    private static var asRoot: Bool { getuid() == 0 }

    /// Runs a server-side binary as a user PostgreSQL accepts (`postgres` when we are root).
    private static func serverCommand(_ binary: String, _ arguments: [String]) -> (String, [String]) {
        asRoot ? ("/usr/sbin/runuser", ["-u", "postgres", "--", binary] + arguments) : (binary, arguments)
    }

    private static func startCluster() async throws -> Running {
        guard FileManager.default.isExecutableFile(atPath: binaries + "/initdb") else {
            throw ClusterError("PostgreSQL 15 is not installed (\(binaries)): make test-deps installs postgresql-15")
        }
        // Short: the socket's path must stay under 108 bytes. /tmp so `postgres` can reach it.
        let base = "/tmp/dallage-pg-" + String(UUID().uuidString.prefix(8)).lowercased()
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: false)
        let password = UUID().uuidString
        try password.write(toFile: base + "/password", atomically: false, encoding: .utf8)
        if asRoot {
            for path in [base, base + "/password"] {
                try FileManager.default.setAttributes([.ownerAccountName: "postgres"], ofItemAtPath: path)
            }
        }
        let port = try freePorts(1)[0]
        let (initdb, initArguments) = serverCommand(
            binaries + "/initdb",
            [
                "-D", base + "/data", "-U", user, "--auth-local=trust", "--auth-host=scram-sha-256",
                "--pwfile=" + base + "/password", "--no-sync",
            ])
        try await ChildProcess.run(initdb, initArguments, log: base + "/initdb.log")
        let options = [
            "-p \(port)", "-k \(base)", "-c listen_addresses=127.0.0.1", "-c max_connections=300",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
        ]
        let (ctl, ctlArguments) = serverCommand(
            binaries + "/pg_ctl",
            ["-D", base + "/data", "-o", options.joined(separator: " "), "-l", base + "/server.log", "-w", "start"])
        try await ChildProcess.run(ctl, ctlArguments, log: base + "/pg_ctl.log")
        try watch(base: base)
        return Running(base: base, port: port, password: password)
    }

    /// Stops the cluster and deletes its folder once this test process is gone, however it ends.
    private static func watch(base: String) throws {
        try ChildProcess.whenThisProcessEnds(
            run: """
                \(binaries)/pg_ctl -D \(base)/data stop -m immediate
                rm -rf \(base)
                """, asUser: "postgres")
    }

    struct ClusterError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}
