// swift-tools-version:6.0
// A grpc-swift-2 echo server and load client, built apart from LiveRoom so its main build stays
// lean. tools/bench runs the same workload against it and against liveroomd.
import PackageDescription

let package = Package(
    name: "grpc-echo",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
    ],
    targets: [
        .executableTarget(name: "grpc-echo", dependencies: [
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
