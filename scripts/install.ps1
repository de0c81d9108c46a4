# install.ps1 installs the Tether agent on Windows as a service, from an
# elevated PowerShell:
#
#   $env:TETHER_JOIN_TOKEN = Read-Host -MaskInput 'Join token'   # or leave unset to be asked
#   .\install.ps1 -Relay relay.example.com:7443 -Service db=10.0.0.5:5432
#
# Like install.sh it downloads only from the relay and trusts a download
# only over TLS whose chain ends in the CA whose SHA-256 fingerprint is in
# the join token (checked in the certificate validation callback, so there
# is no separate unauthenticated step). The token never appears on a
# command line: the agent reads it from standard input.
#
# Steps: download tether-agent-windows-amd64.exe; tether-agent install
# (copies itself to %ProgramFiles%\Tether, creates %ProgramData%\Tether with
# permissions for SYSTEM, Administrators and NT SERVICE\tether-agent only,
# registers the service); enrol into the protected state directory; start.
param(
    [Parameter(Mandatory = $true)][string]$Relay,
    [string]$Download = '',
    [string[]]$Service = @(),
    [switch]$Force
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3

$token = $env:TETHER_JOIN_TOKEN
Remove-Item Env:\TETHER_JOIN_TOKEN -ErrorAction SilentlyContinue
if (-not $token) {
    $secure = Read-Host -AsSecureString 'Join token'
    $token = [Runtime.InteropServices.Marshal]::PtrToStringBSTR([Runtime.InteropServices.Marshal]::SecureStringToBSTR($secure))
}
$token = $token.Trim()
if (-not $token.StartsWith('tjt1_')) { throw 'that is not a join token (it should start with tjt1_)' }
$b64 = $token.Substring(5).Replace('-', '+').Replace('_', '/')
while ($b64.Length % 4) { $b64 += '=' }
$raw = [Convert]::FromBase64String($b64)
if ($raw.Length -ne 73 -or $raw[0] -ne 1) { throw 'the join token is damaged or of an unsupported version' }
$wantFP = -join ($raw[41..72] | ForEach-Object { $_.ToString('x2') })

$relayHost = $Relay.Substring(0, $Relay.LastIndexOf(':'))
if (-not $Download) { $Download = "https://${relayHost}:7444" }
if (-not $Download.StartsWith('https://')) { throw '-Download must be an https:// URL' }

$allow = @()
foreach ($s in $Service) {
    if ($s -notmatch '^[A-Za-z0-9._-]+=[A-Za-z0-9._:\[\]-]+$') { throw "-Service ${s}: want NAME=HOST:PORT" }
    $n, $a = $s.Split('=', 2)
    $allow += "  ${n}: `"$a`""
}

# TLS validation: accept the server only if its chain, built with the
# relay's own certificates, ends in a certificate whose SHA-256 is the
# token's fingerprint. Host names are not checked (relay certificates
# carry SPIFFE IDs); the pinned CA is the trust anchor.
Add-Type -TypeDefinition @"
using System;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
public static class TetherPin {
    public static string Fingerprint;
    public static bool Check(object s, X509Certificate cert, X509Chain chain, SslPolicyErrors e) {
        if (cert == null || chain == null) return false;
        var c2 = new X509Certificate2(cert);
        var ch = new X509Chain();
        ch.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        ch.ChainPolicy.VerificationFlags = X509VerificationFlags.AllowUnknownCertificateAuthority;
        foreach (var el in chain.ChainElements) ch.ChainPolicy.ExtraStore.Add(el.Certificate);
        if (!ch.Build(c2)) return false;
        if (ch.ChainElements.Count < 2) return false;
        var root = ch.ChainElements[ch.ChainElements.Count - 1].Certificate;
        using (var sha = SHA256.Create()) {
            var fp = BitConverter.ToString(sha.ComputeHash(root.RawData)).Replace("-", "").ToLowerInvariant();
            return fp == Fingerprint;
        }
    }
}
"@
[TetherPin]::Fingerprint = $wantFP
[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
[Net.ServicePointManager]::ServerCertificateValidationCallback = [TetherPin]::Check

$tmp = Join-Path ([IO.Path]::GetTempPath()) ("tether-" + [Guid]::NewGuid())
New-Item -ItemType Directory -Path $tmp | Out-Null
try {
    $exe = Join-Path $tmp 'tether-agent.exe'
    try {
        (New-Object Net.WebClient).DownloadFile("$Download/tether-agent-windows-amd64.exe", $exe)
    } catch {
        throw "could not download the agent from $Download (refused unless it comes from the relay's CA): $_"
    }
    Write-Host "downloaded tether-agent $(& $exe version --short) over TLS pinned to the CA sha256:$wantFP"

    $pd = $env:ProgramData
    $config = Join-Path $pd 'Tether\agent.yaml'
    $state = Join-Path $pd 'Tether\state'
    $cfgTmp = Join-Path $tmp 'agent.yaml'
    $lines = @("# Written by install.ps1. The agent reaches only the services listed here.",
        "relays: [`"$Relay`"]",
        "state_dir: '$state'")
    if ($allow.Count -eq 0) { $lines += 'services: {}' } else { $lines += 'services:'; $lines += $allow }
    if (Test-Path $config) { Copy-Item $config $cfgTmp; Write-Host "keeping the existing $config" }
    else { Set-Content -Path $cfgTmp -Value $lines -Encoding ASCII }

    # With -Force over an installed agent that runs (or is starting), stop
    # it first: an agent holds its state directory, and enrol refuses to
    # replace the identity under it. It is started again if install or the
    # enrolment fails, with its previous identity.
    $stopped = $false
    $svc = Get-Service -Name 'tether-agent' -ErrorAction SilentlyContinue
    if ($Force -and $svc -and @('Running', 'StartPending') -contains [string]$svc.Status) {
        Write-Host 'stopping the running agent to enrol this machine again (-Force)'
        Stop-Service -Name 'tether-agent' -ErrorAction Stop
        $stopped = $true
    }
    function Restore-Agent {
        if (-not $stopped) { return }
        try {
            Start-Service -Name 'tether-agent' -ErrorAction Stop
            Write-Host 'started the agent again with its previous identity'
        } catch {
            Write-Host "could not start the agent again (it is stopped): $_"
        }
    }

    # install first: it creates the protected state directory that
    # enrolment then writes the key into.
    & $exe install --config $cfgTmp
    if ($LASTEXITCODE) { Restore-Agent; throw 'tether-agent install failed' }
    $agent = Join-Path $env:ProgramFiles 'Tether\tether-agent.exe'
    # The installed config (kept when there was one) names the state
    # directory the service runs with: the identity goes there.
    $enrollArgs = @('enroll', '--relay', $Relay, '--token-file', '-', '--config', $config)
    if ($Force) { $enrollArgs += '--force' }
    $token | & $agent @enrollArgs | Out-Null
    if ($LASTEXITCODE) { Restore-Agent; throw 'enrolment failed' }
    $token = $null
    & $agent start
    if ($LASTEXITCODE) { throw 'starting the service failed' }
    Write-Host 'the agent is running: Get-Service tether-agent'
} finally {
    [Net.ServicePointManager]::ServerCertificateValidationCallback = $null
    Remove-Item -Recurse -Force $tmp -ErrorAction SilentlyContinue
}
