#!/usr/bin/env bash
# Download Apache Iceberg's reference REST catalog server (org.apache.iceberg.rest.RESTCatalogServer)
# and its runtime classpath from Maven Central into a cache folder, once per version.
#
#   scripts/install-iceberg-rest.sh            # prints the folder holding lib/*.jar
#   ICEBERG_REST_CACHE=/somewhere scripts/install-iceberg-rest.sh
#
# The server ships in the `test-fixtures` jar of org.apache.iceberg:iceberg-open-api, whose POM
# declares no dependencies (they live only in Iceberg's Gradle build), so the classpath is listed
# below: iceberg-core and its `tests` jar (the REST servlet), the aws/gcp/azure modules whose property
# classes the server's adapter loads, the AWS SDK's S3 client (S3FileIO, for an S3 warehouse),
# hadoop-common (a Hadoop Configuration and HadoopFileIO) without its Jetty 9 and logging,
# Jetty 11 (servlet), sqlite-jdbc for the server's JDBC catalog, and slf4j-simple.
# Needs Java 17 and Maven (Debian packages openjdk-17-jre-headless and maven); idempotent: a folder
# whose .complete marker exists is left alone. The tests find it through ICEBERG_REST_HOME or
# the default cache folder.
set -euo pipefail

VERSION="${ICEBERG_REST_VERSION:-1.10.0}"
CACHE="${ICEBERG_REST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dativo/iceberg-rest}"
HOME_DIR="$CACHE/$VERSION"

if [ -f "$HOME_DIR/.complete" ]; then
  echo "$HOME_DIR"
  exit 0
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need java || ! need mvn; then
  echo "installing Java 17 and Maven (Debian packages openjdk-17-jre-headless, maven)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
fi

echo "downloading the Iceberg REST catalog server $VERSION and its classpath (Maven Central, once)" >&2
work="$HOME_DIR.tmp.$$"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# Versions from Iceberg's gradle/libs.versions.toml at that release.
JETTY=11.0.25
HADOOP=3.4.1
AWS_SDK=2.31.78
SQLITE=3.50.2.0
SLF4J=2.0.17

cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dativo.test</groupId>
  <artifactId>iceberg-rest-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-open-api</artifactId><version>$VERSION</version><classifier>test-fixtures</classifier></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-core</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-core</artifactId><version>$VERSION</version><classifier>tests</classifier></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-aws</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-gcp</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-azure</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>software.amazon.awssdk</groupId><artifactId>s3</artifactId><version>$AWS_SDK</version></dependency>
    <dependency><groupId>software.amazon.awssdk</groupId><artifactId>sts</artifactId><version>$AWS_SDK</version></dependency>
    <dependency><groupId>software.amazon.awssdk</groupId><artifactId>kms</artifactId><version>$AWS_SDK</version></dependency>
    <dependency><groupId>software.amazon.awssdk</groupId><artifactId>url-connection-client</artifactId><version>$AWS_SDK</version></dependency>
    <dependency><groupId>software.amazon.awssdk</groupId><artifactId>apache-client</artifactId><version>$AWS_SDK</version></dependency>
    <dependency>
      <groupId>org.apache.hadoop</groupId><artifactId>hadoop-common</artifactId><version>$HADOOP</version>
      <exclusions>
        <exclusion><groupId>org.eclipse.jetty</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>ch.qos.reload4j</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId></exclusion>
        <exclusion><groupId>com.sun.jersey</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>com.github.pjfanning</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.zookeeper</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.curator</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.kerby</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.avro</groupId><artifactId>avro</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency><groupId>org.eclipse.jetty</groupId><artifactId>jetty-servlet</artifactId><version>$JETTY</version></dependency>
    <dependency><groupId>org.eclipse.jetty</groupId><artifactId>jetty-server</artifactId><version>$JETTY</version></dependency>
    <dependency><groupId>org.xerial</groupId><artifactId>sqlite-jdbc</artifactId><version>$SQLITE</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>$SLF4J</version></dependency>
  </dependencies>
</project>
POM

(cd "$work" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib -DincludeScope=runtime >"$work/mvn.log" 2>&1) || {
  echo "install-iceberg-rest.sh: Maven could not resolve the REST server's classpath; see the log below" >&2
  tail -20 "$work/mvn.log" >&2
  exit 1
}
touch "$work/.complete"
rm -rf "$HOME_DIR"
mv "$work" "$HOME_DIR"
trap - EXIT
echo "$HOME_DIR"
